"""Protocol buffer sources and generated modules (regenerate with scripts/gen_protos.sh)."""
