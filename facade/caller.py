"""Who is calling: the key by which the broker shares a pool fairly between callers.

A caller is one gRPC client connection, `context.peer()` (e.g. "ipv4:127.0.0.1:50412"). The shared
token cannot tell callers apart (everybody presents the same one), and a key chosen by the client in
its metadata would let one client split itself into many callers to take more turns. One connection is
what one client process opens; a client that opens more connections gets more turns, as it would
with any per-connection limit.

The interceptor wraps each method's handler once; per call it stores the peer in a context variable,
which BrokerClient copies into every REQUEST header it sends for that call (also from the tasks the
call starts: asyncio copies context variables into them), so every route is tagged in one place.
"""
from __future__ import annotations

import contextvars
import inspect

from facade.handler_wrap import WrappingInterceptor, handler_field

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("pml_caller", default="")

UNTAGGED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")   # never reach the broker


def _peer(context) -> str:
    try:
        return context.peer() or ""
    except Exception:  # a context without a peer (tests, in-process calls)
        return ""


def wrap(handler):
    """The same handler, with CALLER set to the call's peer while it runs; async handlers only."""
    if handler is None:
        return None
    field = handler_field(handler)
    inner = getattr(handler, field)
    if inspect.isasyncgenfunction(inner):
        async def gen(request, context):
            CALLER.set(_peer(context))
            async for out in inner(request, context):
                yield out
        return handler._replace(**{field: gen})
    if inspect.iscoroutinefunction(inner):
        async def call(request, context):
            CALLER.set(_peer(context))
            return await inner(request, context)
        return handler._replace(**{field: call})
    return handler


class CallerInterceptor(WrappingInterceptor):
    """Tags each call with its caller (see the module docstring); handlers are wrapped once, not per call."""

    skip_prefixes = UNTAGGED_PREFIXES

    def wrap(self, handler, method: str):
        return wrap(handler)
