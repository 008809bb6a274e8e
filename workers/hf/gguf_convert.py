"""Convert a GGUF causal LM to a safetensors model directory, once, under a file lock.

transformers reads GGUF with `gguf_file=` (dequantising every tensor, ~20 s for SmolLM2-135M on
two cores). Re-saving the result with save_pretrained makes every later load take < 1 s. The
conversion writes into a temporary folder next to the target and renames it into place, so a
crash mid-way never leaves a half-written model that looks complete; a `.complete` marker
is the last file written. Concurrent workers serialise on a lock file.

transformers' `from_pretrained(gguf_file=...)` insists on `accelerate` only for its device-map
machinery; when accelerate is absent we build the model from the GGUF config and load the
dequantised tensors with transformers' own GGUF reader (same tensor-name mapping).
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger("hf.gguf")


def _load_from_gguf(gguf: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_accelerate_available

    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    if is_accelerate_available():
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        return model, tok
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model,
                                   torch_dtype=torch.float32)["tensors"]
    result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise RuntimeError(f"GGUF {gguf.name}: missing tensors {sorted(missing)[:5]}, "
                           f"unexpected {sorted(result.unexpected_keys)[:5]}")
    model.tie_weights()
    return model, tok


def convert_gguf_once(gguf: Path, out: Path) -> Path:
    """Make `out` a safetensors model directory converted from `gguf` (no-op when already done)."""
    gguf, out = Path(gguf), Path(out)
    if (out / ".complete").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / (out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".complete").is_file():
            return out
        t0 = time.time()
        log.info("converting %s to safetensors in %s (once)", gguf.name, out)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model, tok = _load_from_gguf(gguf)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / ".complete").write_text(f"from {gguf}\n")
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("converted %s in %.1fs", gguf.name, time.time() - t0)
    return out
