"""text-generation / chat: a causal LM and its tokenizer (GGUF files are converted once to safetensors)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.context import WorkerError


@dataclass
class CausalLM:
    model: Any
    tokenizer: Any


def load(lc) -> CausalLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = lc.path
    if lc.resolved.gguf_file:   # a GGUF from a local dir or the file service: convert once, then load
        from workers.hf.gguf_convert import convert_gguf_once
        root = Path(lc.worker_options.get("cache_dir") or path)
        path = convert_gguf_once(path / lc.resolved.gguf_file, root / "converted" / Path(lc.resolved.gguf_file).stem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=lc.dtype)
    except (OSError, ValueError) as exc:
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' at {path} could not be loaded as a "
                                                 f"causal language model: {exc}") from None
    return CausalLM(model.to(lc.device).eval(), tokenizer)


def warm_up(h: CausalLM) -> None:
    import torch
    with torch.inference_mode():
        h.model(input_ids=torch.tensor([[h.tokenizer.bos_token_id or 0]], device=h.model.device))
