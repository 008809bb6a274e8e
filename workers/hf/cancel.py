"""A request's cancel token, and the error a stopped request ends with.

The token is the request's own cancel event (set by the worker base when the client cancels) and its
deadline; the code that runs the work (the embedding batcher before each sub-batch, the generation loop
before each token) asks `reason()` and stops there, so a stopped request is answered only once its work
has stopped.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from workers.context import Cancelled, RequestContext, WorkerError


@dataclass(frozen=True)
class CancelToken:
    event: threading.Event = field(default_factory=threading.Event)
    deadline: Optional[float] = None          # time.time() seconds; None: no deadline

    @classmethod
    def of(cls, ctx: RequestContext) -> "CancelToken":
        return cls(ctx.cancelled, ctx.deadline)

    def reason(self) -> Optional[str]:
        """"cancelled", "deadline" or None (go on)."""
        if self.event.is_set():
            return "cancelled"
        if self.deadline is not None and time.time() > self.deadline:
            return "deadline"
        return None


def raise_for(reason: str, ctx: RequestContext, done: int = 0,
              what: str = "generated tokens; raise the deadline or lower max_length"):
    """End a stopped request: CANCELLED, or DEADLINE_EXCEEDED saying how far it got."""
    if reason == "cancelled":
        raise Cancelled()
    raise WorkerError("DEADLINE_EXCEEDED", f"{ctx.method}: deadline passed after {done} {what}")
