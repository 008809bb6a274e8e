"""Import, before READY, what the first load of the default generation model needs.

transformers imports a model's code lazily: `AutoModelForCausalLM` and `modeling_llama` cost ~1.6 s on
two cores, paid inside the first GenerateText unless paid here. With the built-in SmolLM2 converted
ahead (scripts/prepare_models.py) the first GenerateText after SERVING then takes ~0.6 s to its first
token (tokenizer, weights, one warm-up pass) instead of ~2.3 s. Only modules are imported: no weights
are loaded, so a worker that never generates pays ~40 MB, not the model's ~530 MB (`--preload` does that).

Nothing here may fail the worker: a model that cannot be resolved locally yet (not converted, file
service) simply warms the generic classes.
"""
from __future__ import annotations

import importlib
import json
import time


def model_type_of(resolver, model_id: str) -> str:
    """config.json's model_type of a locally available model, or "" (never converts, never fetches)."""
    try:
        res = resolver.local(model_id)
    except Exception:
        return ""
    if res is None or getattr(res, "gguf_file", None):
        return "llama" if res is not None and getattr(res, "builtin", "") == "smollm2" else ""
    try:
        with open(res.path / "config.json") as f:
            return str(json.load(f).get("model_type") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def warm_generation_imports(resolver, model_id: str, log) -> float:
    """Import the causal-LM classes and `model_id`'s modeling module; returns the seconds it took."""
    t0 = time.perf_counter()
    model_type = ""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (lazy attributes: imports)
        import workers.hf.generation  # noqa: F401
        import workers.hf.pipelines.text_generation  # noqa: F401
        model_type = model_type_of(resolver, model_id)
        if model_type:
            from transformers.models.auto.configuration_auto import model_type_to_module_name
            mod = model_type_to_module_name(model_type)
            importlib.import_module(f"transformers.models.{mod}.modeling_{mod}")
    except Exception as exc:  # a warm-up is an optimisation: log and go on
        log.warning("warming the imports for %s failed (%s: %s); its first request imports them",
                    model_id, type(exc).__name__, exc)
    dt = time.perf_counter() - t0
    log.info("warmed the generation imports for %s (%s) in %.2fs", model_id, model_type or "generic", dt)
    return dt
