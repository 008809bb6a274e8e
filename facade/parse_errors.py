"""Requests that do not parse answer INVALID_ARGUMENT, not UNKNOWN.

grpc's own answer to a request its deserializer cannot parse (malformed protobuf, a string field that is
not valid UTF-8) is UNKNOWN "Unexpected DecodeError: Error parsing message". This interceptor wraps every
method handler's deserializer: a message that fails to parse becomes a marker, and the handler answers
INVALID_ARGUMENT naming the method and the message type instead of being called with it. In a client
stream, the stream ends at the bad message with the same status (earlier messages were already handled).
"""
from __future__ import annotations

import inspect

import grpc
from google.protobuf.message import DecodeError

from facade.handler_wrap import WrappingInterceptor


class Undecodable:
    __slots__ = ("detail",)

    def __init__(self, detail: str):
        self.detail = detail


def _message(method: str, bad: Undecodable) -> str:
    return (f"{method}: the request could not be parsed ({bad.detail}): malformed protobuf, a wrong message "
            f"type, or a string field that is not valid UTF-8")


def _safe(deserializer):
    if deserializer is None:
        return None

    def parse(raw: bytes):
        try:
            return deserializer(raw)
        except (DecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
            return Undecodable(str(exc)[:200] or type(exc).__name__)
    return parse


def wrap(handler, method: str):
    if handler is None or handler.request_deserializer is None:
        return handler
    safe = _safe(handler.request_deserializer)
    if not handler.request_streaming:
        inner = handler.unary_unary or handler.unary_stream
        if handler.response_streaming and inspect.isasyncgenfunction(inner):
            async def unary_stream(request, context):
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, request))
                async for out in inner(request, context):
                    yield out
            return handler._replace(request_deserializer=safe, unary_stream=unary_stream)
        if handler.response_streaming:   # a handler using context.write() (e.g. health Watch)
            async def unary_stream_write(request, context):
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, request))
                return await inner(request, context)
            return handler._replace(request_deserializer=safe, unary_stream=unary_stream_write)

        async def unary_unary(request, context):
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, request))
            return await inner(request, context)
        return handler._replace(request_deserializer=safe, unary_unary=unary_unary)

    def guarded(request_iterator, bad: list):
        async def gen():
            async for msg in request_iterator:
                if isinstance(msg, Undecodable):
                    bad.append(msg)
                    return
                yield msg
        return gen()

    if handler.response_streaming and not inspect.isasyncgenfunction(handler.stream_stream):
        return handler  # context.write()-style bidi handler: left as grpc serves it
    if handler.response_streaming:
        inner_ss = handler.stream_stream

        async def stream_stream(request_iterator, context):
            bad: list = []
            async for out in inner_ss(guarded(request_iterator, bad), context):
                if bad:
                    break
                yield out
            if bad:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, bad[0]))
        return handler._replace(request_deserializer=safe, stream_stream=stream_stream)

    inner_su = handler.stream_unary

    async def stream_unary(request_iterator, context):
        bad: list = []
        result = await inner_su(guarded(request_iterator, bad), context)
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, bad[0]))
        return result
    return handler._replace(request_deserializer=safe, stream_unary=stream_unary)


class DecodeErrorInterceptor(WrappingInterceptor):
    """Wraps each method's handler once (cached by method and handler identity), not on every call."""

    def wrap(self, handler, method: str):
        return wrap(handler, method)
