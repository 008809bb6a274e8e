"""Model placement: which pool loads a model (the facade's LoadModel, run.py's --preload); no heavy imports."""
from __future__ import annotations

from common.model_resolver import LITERT, family_of_file

# LoadModel pipeline types served by the litert pool; everything else goes to hf
LITERT_PIPELINES = {"tflite", "litert", "tensor", "kserve"}


def pool_for_load(pipeline_type: str, model_id: str, options) -> str:
    if options.get("pool"):
        return options["pool"]
    if (pipeline_type or "").lower() in LITERT_PIPELINES or family_of_file(model_id) == LITERT:
        return "litert"
    return "hf"


def parse_preload(spec: str) -> tuple:
    """'[pool[@device]=]MODEL_ID' -> (pool or '', device or '', model_id)."""
    target, sep, model_id = spec.partition("=")
    if not sep:
        return "", "", spec.strip()
    pool, _, device = target.strip().partition("@")
    return pool, device, model_id.strip()
