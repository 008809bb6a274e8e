"""feature-extraction: sentence-transformers or a plain encoder, behind the dynamic batcher."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.options import as_bool
from workers.context import WorkerError


@dataclass
class Embeddings:
    embedder: Any
    batcher: Any

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def load(lc) -> Embeddings:
    import torch
    from workers.hf.embeddings import Embedder, EmbeddingBatcher
    opts = lc.opts
    norm = opts.get("normalize")
    normalize = None if norm in (None, "", "auto") else as_bool(norm, True, "normalize")
    try:
        embedder = Embedder(str(lc.path), lc.device, lc.dtype if lc.dtype != torch.float32 else None,
                            normalize, int(opts.get("max_seq_length") or 0))
    except (OSError, ValueError) as exc:
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' at {lc.path} could not be "
                                                 f"loaded as an embedding model: {exc}") from None
    wo = lc.worker_options
    max_batch = int(opts.get("max_batch") or wo.get("embed_max_batch") or 32)
    max_wait_s = float(opts.get("max_wait_ms") or wo.get("embed_max_wait_ms") or 5) / 1000.0
    return Embeddings(embedder, EmbeddingBatcher(embedder.encode, max_batch, max_wait_s, name=lc.model_id))


def warm_up(h: Embeddings) -> None:
    h.embedder.encode(["warm up"])
