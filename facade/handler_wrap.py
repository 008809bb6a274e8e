"""What the facade's server interceptors share: which callable of a gRPC method handler runs the call, and
an interceptor base that wraps each method's handler once (cached by method and handler identity), not on
every call. Interceptors built on it: facade/caller.py, facade/parse_errors.py, facade/response_limit.py.
"""
from __future__ import annotations

from typing import Optional

import grpc


def handler_field(handler) -> str:
    """The RpcMethodHandler field holding the behaviour: unary_unary, unary_stream, stream_unary, stream_stream."""
    if handler.request_streaming and handler.response_streaming:
        return "stream_stream"
    if handler.request_streaming:
        return "stream_unary"
    if handler.response_streaming:
        return "unary_stream"
    return "unary_unary"


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Subclasses define `wrap(handler, method)`; methods under `skip_prefixes` are left untouched."""

    skip_prefixes: tuple = ()

    def __init__(self):
        self._wrapped: dict = {}

    def wrap(self, handler, method: str):  # pragma: no cover - abstract
        raise NotImplementedError

    async def intercept_service(self, continuation, handler_call_details) -> Optional[object]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or (self.skip_prefixes and method.startswith(self.skip_prefixes)):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
