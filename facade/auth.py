"""Optional shared-token authentication (DESIGN §6).

When the token environment variable is set, every call must carry `authorization: Bearer <token>`
(or `x-api-key: <token>`). Health checks and reflection stay open so that spawners and tools can
probe readiness without the secret.
"""
from __future__ import annotations

import hmac
from typing import Optional

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny(message: str):
    async def deny_unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request_or_iter, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield b""  # pragma: no cover - makes this an async generator
    return deny_unary, deny_stream


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self.token = token.encode()

    def _check(self, metadata) -> Optional[str]:
        presented = None
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
                presented = value[7:].strip()
            elif key == "x-api-key" and isinstance(value, str):
                presented = value.strip()
        if presented is None:
            return "missing credentials: send metadata 'authorization: Bearer <token>'"
        if not hmac.compare_digest(presented.encode(), self.token):
            return "invalid token"
        return None

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        problem = self._check(handler_call_details.invocation_metadata)
        if problem is None:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        deny_unary, deny_stream = _deny(problem)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny_stream)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny_unary)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny_stream)
        return grpc.unary_unary_rpc_method_handler(deny_unary)
