"""How many request bytes the facade may hold at once (--facade-buffer-mb), in total and per stream.

A pass-through request message is charged when the facade receives it and released when its reply comes
back or it is dropped: pending stream frames, frames on their way to a worker, unary requests waiting in
the broker's queue. Stream readers wait for room before pulling their next message, so beyond the budget
gRPC flow control pushes back on the clients instead of the facade buffering; waiters are woken in
arrival order, and a stream keeps at most `max(2 frames, STREAM_BYTES)` pending, so one stream cannot
take the whole budget. A unary request (gRPC has already read it) is refused with RESOURCE_EXHAUSTED
when it does not fit, rather than held. Overshoot: one message per stream that was reading when the
budget filled, and one unary request when nothing else is held (a single request always fits).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

log = logging.getLogger("facade.budget")

DEFAULT_BUFFER_MB = 256
STREAM_BYTES = 16 * 2**20  # pending bytes one stream keeps beyond its 2 newest frames
LOG_EVERY_S = 10.0


class ByteBudget:
    def __init__(self, limit_bytes: int):
        self.limit = max(1, int(limit_bytes))
        self.used = 0
        self.peak = 0
        self.waits = 0      # times a stream reader stopped pulling because the budget was spent
        self.refused = 0    # unary requests refused with RESOURCE_EXHAUSTED
        self._waiters: deque = deque()
        self._logged = 0.0

    def charge(self, n: int) -> None:
        """Count bytes that are already in memory (a received stream message)."""
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def admit(self, n: int) -> bool:
        """Charge a unary request if it fits (or if nothing else is held); False = refuse it."""
        if self.used and self.used + n > self.limit:
            self.refused += 1
            self._note("refusing unary requests")
            return False
        self.charge(n)
        return True

    def refusal(self, what: str, n: int) -> str:
        mib = 2**20
        return (f"{what}: the service is holding {self.used / mib:.0f} MiB of requests not yet answered "
                f"(limit {self.limit / mib:.0f} MiB, --facade-buffer-mb); this {n / mib:.1f} MiB request does "
                f"not fit now: retry with back-off")

    async def room(self) -> None:
        """Return when the facade holds less than the limit; callers queue in arrival order."""
        if self.used < self.limit and not self._waiters:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.waits += 1
        self._note("pausing stream reads")
        self._wake()
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def _note(self, what: str) -> None:
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.warning("request buffer full (%.0f of %.0f MiB held, --facade-buffer-mb): %s",
                        self.used / 2**20, self.limit / 2**20, what)

    def _wake(self) -> None:
        while self._waiters and self.used < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def snapshot(self) -> dict:
        return {"limit": self.limit, "used": self.used, "peak": self.peak, "waits": self.waits,
                "refused": self.refused}
