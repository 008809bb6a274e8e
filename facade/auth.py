"""Optional shared-token authentication (DESIGN §6).

When the token environment variable is set, every call must carry `authorization: Bearer <token>`
(or `x-api-key: <token>`). Health checks and reflection stay open so that spawners and tools can
probe readiness without the secret.

The check runs on the call's metadata, before any request message is read: a refused call of any shape
is answered by a stream-stream handler that never reads (grpc.aio reads a unary request in full before
calling a unary handler, so a unary "deny" handler would first buffer up to --max-message-mb). What gRPC
core has already received of the body when the status goes out is bounded by the stream's HTTP/2 flow
control window, and the client is then told to stop sending.
"""
from __future__ import annotations

import hmac
from typing import Optional

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _deny(message: str):
    async def deny(request_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield b""  # pragma: no cover - makes this an async generator
    # stream-stream for every method shape: grpc does not read the request before the handler runs
    return grpc.stream_stream_rpc_method_handler(deny)


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
        if await continuation(handler_call_details) is None:
            return None  # unknown method: UNIMPLEMENTED, as without a token
        return _deny(problem)
