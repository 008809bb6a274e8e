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
    return Embeddings(embedder, EmbeddingBatcher(embedder.encode, max_batch, max_wait_s(opts, wo), name=lc.model_id,
                                                 count=embedder.token_counts))


def max_wait_s(opts: dict, worker_options: dict):
    """The batcher's fill wait in seconds: the load option max_wait_ms, else the worker option
    embed_max_wait_ms, else None: the wait follows the model (EmbeddingBatcher.fill_wait_s)."""
    for value in (opts.get("max_wait_ms"), worker_options.get("embed_max_wait_ms")):
        if value not in (None, ""):
            return float(value) / 1000.0
    return None


def warm_up(h: Embeddings) -> None:
    h.embedder.encode(["warm up"])
