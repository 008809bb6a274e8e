"""Stand-ins for driving the facade's real pass-through handlers in-process (no tests here): a broker that
answers only when told, a gRPC servicer context, a client stream that counts what the facade pulled, and
a loop runner that waits until the facade stops pulling."""
from __future__ import annotations

import asyncio
from typing import Callable, Optional


class Broker:
    """A BrokerClient stand-in: echoes each request's payload, only once `answer` is set."""

    def __init__(self):
        self.sent = 0
        self.answer = asyncio.Event()

    async def unary(self, method, pool, payload, **kwargs) -> bytes:
        self.sent += 1
        await self.answer.wait()
        return payload

    async def close_stream(self, stream_id: str) -> None:
        pass


class Aborted(Exception):
    """What Context.abort raises: args (code, message)."""


class Context:
    """The grpc.aio servicer context of one call: its metadata, what it set as trailers; abort raises Aborted."""

    def __init__(self, metadata=()):
        self.metadata = tuple(metadata)
        self.trailing = ()

    def invocation_metadata(self):
        return self.metadata

    def time_remaining(self):
        return None

    def set_trailing_metadata(self, md):
        self.trailing = tuple(md)

    async def abort(self, code, message):
        raise Aborted(code, message)


class Source:
    """A client stream of `count` messages written at once, `make(n)` the n-th; counts what the facade pulled.
    Each read gives the event loop a turn, as a read from gRPC does. Each message is handed over as the sized
    deserializer does, (message, size, side), its frame still inside; size = `nbytes` when given, else the
    message's own size."""

    def __init__(self, make: Callable[[int], object], count: int, nbytes: Optional[int] = None):
        self.make, self.count, self.nbytes, self.pulled = make, count, nbytes, 0

    async def __aiter__(self):
        while self.pulled < self.count:
            await asyncio.sleep(0)
            msg = self.make(self.pulled)
            self.pulled += 1
            yield msg, (msg.ByteSize() if self.nbytes is None else self.nbytes), None


async def settle(*sources: Source, steps: int = 300) -> None:
    """Run the event loop until no source pulls another message for `steps` turns."""
    last, quiet = None, 0
    while quiet < steps:
        await asyncio.sleep(0)
        now = [s.pulled for s in sources]
        quiet = quiet + 1 if now == last else 0
        last = now
