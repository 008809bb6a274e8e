"""Model placement: which pool loads a model (the facade's LoadModel, run.py's --preload); no heavy imports."""
from __future__ import annotations

from common.families import FAMILIES
from common.model_resolver import family_of_file


def pool_for_load(pipeline_type: str, model_id: str, options) -> str:
    """The pool that loads a model: the `pool` option when given, else the family that claims its pipeline
    type or its file's kind (common/families.py), else the family that loads the rest."""
    if options.get("pool"):
        return options["pool"]
    kind, ptype = family_of_file(model_id), (pipeline_type or "").lower()
    for f in FAMILIES.values():
        if ptype in f.load_pipelines or (kind is not None and kind in f.load_file_kinds):
            return f.name
    return next(f.name for f in FAMILIES.values() if f.loads_the_rest)


def parse_preload(spec: str) -> tuple:
    """'[pool[@device]=]MODEL_ID' -> (pool or '', device or '', model_id)."""
    target, sep, model_id = spec.partition("=")
    if not sep:
        return "", "", spec.strip()
    pool, _, device = target.strip().partition("@")
    return pool, device, model_id.strip()
