"""ml.TransformersService/GenerateEmbeddings: bounded, then batched across requests (workers/hf/embeddings.py).

`EmbeddingHandlers` is a mixin of workers/hf/service.py's HFService. The reply is written straight from the
float32 vectors (`encode_reply`: the wire bytes of a GeneratedEmbeddingsResponse, the same bytes protobuf
writes) instead of through 384 Python floats per vector. The prompt_tokens of the reply come from the
batcher (one tokenizer call per forward pass, shared out per request), not from each handler thread.
"""
from __future__ import annotations

import numpy as np

from common.status import ModelUnloaded
from protos import ml_inference_pb2 as ML
from workers.context import RequestContext, WorkerError
from workers.hf import limits
from workers.hf.cancel import CancelToken, raise_for


class EmbeddingHandlers:
    """Mixin: GenerateEmbeddings."""

    def _check_embed(self, payload: bytes) -> "ML.GenerateEmbeddingsRequest":
        """Bounds first: request bytes, then the number of texts, then each text's and all texts' length."""
        limits.check_payload(payload, limits.max_request_bytes(self.embed_max_total_chars, self.max_embed_texts),
                             "GenerateEmbeddings", f"{self.max_embed_texts} texts, {self.embed_max_total_chars} characters")
        req = ML.GenerateEmbeddingsRequest.FromString(payload)
        texts = req.texts
        if not texts:
            raise WorkerError("INVALID_ARGUMENT", "texts is empty: send at least one text to embed")
        limits.check_count(len(texts), self.max_embed_texts, "GenerateEmbeddings: texts", "max_embed_texts",
                           "split the texts over several requests")
        total = 0
        for i, t in enumerate(texts):
            limits.check_chars(len(t), self.embed_max_text_chars, f"GenerateEmbeddings: texts[{i}]",
                               "embed_max_text_chars", "split it into passages (the model reads only its start)")
            total += len(t)
        limits.check_chars(total, self.embed_max_total_chars, "GenerateEmbeddings: the texts together",
                           "embed_max_total_chars", "split the texts over several requests")
        return req

    def generate_embeddings(self, ctx: RequestContext) -> bytes:
        from workers.hf.embeddings import Stopped
        req = self._check_embed(ctx.payload)
        texts = list(req.texts)
        lm = self._acquire(req.model or self.default_emb_model, "embed")
        batcher = lm.batcher
        if batcher is None:
            raise ModelUnloaded(lm.model_id)
        try:   # ModelUnloaded if it is unloaded meanwhile
            vecs, tokens = batcher.embed_counted(texts, CancelToken.of(ctx))
        except Stopped as exc:
            raise_for(exc.reason, ctx, exc.done, f"of {len(texts)} texts were embedded; raise the deadline "
                                                 "or send fewer texts per request")
        if tokens is None:   # a batcher without a counter: count here
            embedder = getattr(lm, "embedder", None)
            tokens = embedder.count_tokens(texts) if embedder is not None else 0
        return encode_reply(vecs, tokens)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_reply(vecs, prompt_tokens: int = 0) -> bytes:
    """GeneratedEmbeddingsResponse bytes for the rows of `vecs`: each row one `embeddings` entry whose
    `values` (field 1) are packed little-endian float32, as protobuf itself serialises them; then
    `prompt_tokens` (field 100, varint) when not 0."""
    rows = np.ascontiguousarray(vecs, dtype="<f4")
    if rows.ndim != 2:
        rows = rows.reshape(len(rows), -1)
    dim = rows.shape[1] if rows.size else 0
    inner = b"\x0a" + _varint(4 * dim) if dim else b""     # GeneratedEmbedding.values, packed
    entry = b"\x0a" + _varint(len(inner) + 4 * dim) + inner  # GeneratedEmbeddingsResponse.embeddings
    tail = b"\xa0\x06" + _varint(prompt_tokens) if prompt_tokens else b""   # field 100, wire type 0
    return b"".join(entry + row.tobytes() for row in rows) + tail
