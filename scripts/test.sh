#!/usr/bin/env bash
# Set up (if needed, with the dev tools) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
