"""Cancel and deadline checks shared by the hf handlers: a request's `should_stop()` and the error it ends with."""
from __future__ import annotations

import time
from typing import Optional

from workers.context import Cancelled, RequestContext, WorkerError


def stopper(ctx: RequestContext):
    """should_stop() -> "cancelled", "deadline" or None: asked between tokens, sub-batches and segments."""
    def should_stop() -> Optional[str]:
        if ctx.cancelled.is_set():
            return "cancelled"
        d = ctx.deadline
        if d is not None and time.time() > d:
            return "deadline"
        return None
    return should_stop


def raise_for(reason: str, ctx: RequestContext, done: int = 0,
              what: str = "generated tokens; raise the deadline or lower max_length"):
    """End a stopped request: CANCELLED, or DEADLINE_EXCEEDED saying how far it got."""
    if reason == "cancelled":
        raise Cancelled()
    raise WorkerError("DEADLINE_EXCEEDED", f"{ctx.method}: deadline passed after {done} {what}")
