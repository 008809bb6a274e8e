"""Answers the client can read: no message the facade sends is larger than --max-response-mb (default 4).

The orchestrator's client (tonic) refuses any message above 4 MiB with an obscure decode error, so the
service never sends one. `ResponseLimitInterceptor` wraps every method handler once (pass-through
routes, KServe, model management, stats, diagnostics): each response message is serialized here and
its size checked before gRPC sends it. A unary answer that is too big becomes RESOURCE_EXHAUSTED
naming its size, the limit and what to ask for instead (fewer texts, a smaller batch, a smaller
image); a streamed message that is too big ends the stream the same way. Routes whose messages can
legitimately be large are produced under the limit where they are made (GetModelFile chunks:
facade/model_files.py; AutoFlip frames and segmentation masks: workers/vision/fit.py), so this is the
last line, not the normal path. gRPC's own grpc.max_send_message_length is set to the same limit.

Handlers that write with context.write() (health Watch) are left as gRPC serves them: their messages
are a few bytes.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import grpc

from facade.handler_wrap import WrappingInterceptor, handler_field

DEFAULT_MAX_RESPONSE_MB = 4.0
FLAG = "--max-response-mb"

# what to ask for instead, per method (full path without the leading slash) or service prefix
_ADVICE = {
    "ml.TransformersService/GenerateEmbeddings": "send fewer texts per GenerateEmbeddings request",
    "inference.GRPCInferenceService/ModelInfer": "send a smaller batch per ModelInfer request "
                                                 "(fewer items in the input tensors)",
    "pythonml.v1.Pipelines/Run": "send fewer or shorter inputs per Run request",
    "pythonml.v1.Pipelines/RunStream": "send fewer or shorter inputs per RunStream request",
    "pythonml.v1.Speech/Transcribe": "send shorter audio per request (or use StreamTranscribe)",
    "pythonml.v1.Diagnostics/Echo": "send a smaller payload",
    "ml.MediapipeService/": "send a smaller image or ask for a lower output resolution or a compressed "
                            "output format (metadata frame_format / output_format = jpeg)",
}
_DEFAULT_ADVICE = "ask for less per request"


def mib(nbytes: int) -> str:
    """'4 MiB', '0.5 MiB': the limit as the flag spells it."""
    return f"{nbytes / 2**20:g} MiB"


def _embeddings_detail(raw: bytes, limit: int) -> str:
    """', this answer holds 300 embeddings of 384 floats: at most 2719 fit' for GenerateEmbeddings."""
    try:
        from protos import ml_inference_pb2 as ML
        resp = ML.GeneratedEmbeddingsResponse.FromString(raw)
    except Exception:
        return ""
    n = len(resp.embeddings)
    if not n:
        return ""
    per = -(-len(raw) // n)
    return (f" (this answer holds {n} embeddings of {len(resp.embeddings[0].values)} floats, about {per} bytes "
            f"each: at most {limit // per} fit)")


def advice(method: str, raw: bytes = b"", limit: int = 0) -> str:
    m = method.lstrip("/")
    text = _ADVICE.get(m)
    if text is None:
        text = next((v for k, v in _ADVICE.items() if k.endswith("/") and m.startswith(k)), _DEFAULT_ADVICE)
    if m == "ml.TransformersService/GenerateEmbeddings" and raw:
        text += _embeddings_detail(raw, limit)
    return text


def refusal(method: str, nbytes: int, limit: int, raw: bytes = b"", index: Optional[int] = None) -> str:
    """The message a person reads when an answer (or stream message `index`) is above the limit."""
    m = method.lstrip("/")
    what = "the answer" if index is None else f"message {index} of the stream"
    return (f"{m}: {what} is {nbytes} bytes, above the client's {mib(limit)} limit ({FLAG}): "
            f"{advice(m, raw, limit)}, or raise {FLAG} if the client reads larger messages")


def wrap(handler, method: str, limit: int):
    """The same handler whose response messages are serialized here and checked against `limit`."""
    if handler is None:
        return None
    serialize: Optional[Callable] = handler.response_serializer

    def raw_of(out) -> bytes:
        return serialize(out) if serialize is not None else out

    field = handler_field(handler)
    inner = getattr(handler, field)

    if handler.response_streaming:
        if not inspect.isasyncgenfunction(inner):
            return handler   # context.write()-style handler: left alone

        async def stream(request, context):
            gen = inner(request, context)
            index = 0
            try:
                async for out in gen:
                    raw = raw_of(out)
                    if len(raw) > limit:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            refusal(method, len(raw), limit, index=index))
                    index += 1
                    yield raw
            finally:
                await gen.aclose()
        return handler._replace(**{field: stream}, response_serializer=None)

    if not inspect.iscoroutinefunction(inner):
        return handler

    async def unary(request, context):
        out = await inner(request, context)
        if out is None:
            return out
        raw = raw_of(out)
        if len(raw) > limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal(method, len(raw), limit, raw))
        return raw
    return handler._replace(**{field: unary}, response_serializer=None)


class ResponseLimitInterceptor(WrappingInterceptor):
    """Checks every response message against the limit; handlers are wrapped once per method, not per call."""

    def __init__(self, limit_bytes: int):
        super().__init__()
        self.limit = int(limit_bytes)

    def wrap(self, handler, method: str):
        return wrap(handler, method, self.limit)
