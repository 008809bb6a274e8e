"""Progress watchdog: a worker whose every credit is held by stuck requests is hung, heartbeats or not.

A handler blocked forever (a read() on a pipe nobody writes, a deadlock in a library) does not stop the
worker's heartbeat thread, so the heartbeat check cannot see it: the pool looks ready and every request
waits for a credit that never comes back. The broker knows each worker's in-flight requests, their
deadlines and when the worker last answered anything, which is enough to notice it:

- a request with a deadline is stuck once its deadline passed more than `grace` ago with no reply or
  partial since (a healthy handler answers soon after the facade's CANCEL at the deadline);
- a request without a deadline is stuck after `stall_timeout` seconds without a reply or partial;
- the worker is stuck when it sent no reply for `grace` seconds and every one of its credits is taken
  by stuck requests (a draining worker: every in-flight request). A worker with a free credit can
  still serve, so it is left alone; its stuck handlers are caught once they hold every credit.
"""
from __future__ import annotations

from typing import Optional


def request_stuck(req, now: float, grace: float, stall_timeout: float) -> bool:
    if req.deadline is not None:
        return now - max(req.deadline, req.last_activity) >= grace
    return now - req.last_activity >= stall_timeout


def stall_reason(ws, now: float, grace: float, stall_timeout: float) -> Optional[str]:
    """Why worker `ws` counts as stuck (a sentence for logs and for its in-flight requests), or None.
    `stall_timeout` <= 0 turns the watchdog off."""
    if stall_timeout <= 0 or not ws.inflight or ws.state not in ("ready", "draining"):
        return None
    if ws.state == "ready" and len(ws.inflight) < ws.capacity:
        return None
    quiet = now - ws.last_reply
    if quiet < grace:
        return None
    reqs = list(ws.inflight.values())
    if not all(request_stuck(r, now, grace, stall_timeout) for r in reqs):
        return None
    late = sum(1 for r in reqs if r.deadline is not None)
    what = []
    if late:
        what.append(f"{late} request{'s' if late > 1 else ''} past their deadline by more than {grace:.0f}s")
    if len(reqs) - late:
        n = len(reqs) - late
        what.append(f"{n} request{'s' if n > 1 else ''} silent for more than {stall_timeout:.0f}s")
    return f"worker {ws.worker_id} made no progress for {quiet:.0f}s on {' and '.join(what)}"
