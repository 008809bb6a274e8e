"""The facade's cores follow the latency traffic: kept to the idle pools' cores while a latency pool (vision,
litert) is being served, every core of the service otherwise.

Why (common/cpu_policy.facade_cpus has the numbers): a facade thread woken by the vision worker's reply was
placed on the vision worker's core and took 2.5-5% of it while an LLM streamed, so while frames flow the
facade keeps to the cores of the SCHED_IDLE pools, where it preempts them at once. Pinned for good, it also
lost the latency pool's core when no frame was flowing: 32 embeddings clients on vision,hf got 190 instead
of 202 sentences/s. So the facade narrows when it sends a latency pool's request (before the request leaves,
so its reply already finds the facade narrowed) and widens again once no such request was sent for LINGER_S.
Everything runs on the facade's event loop thread: no lock.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable, Optional

log = logging.getLogger("pythonml.facade.cores")

LINGER_S = 2.0   # a camera at >= 1 frame a second keeps the facade narrowed between its frames


def set_process_cores(cores: set) -> None:
    """Every thread of this process to `cores` (a thread started later inherits its creator's)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (OSError, ValueError):
            pass   # a thread that ended meanwhile


class FacadeCores:
    """`request(pool)` is called for every request the facade sends; `narrow` are the cores to keep to while
    a pool in `latency_pools` is served, `wide` the cores otherwise."""

    def __init__(self, narrow: Iterable[int], wide: Iterable[int], latency_pools: Iterable[str], loop,
                 linger_s: float = LINGER_S, apply: Callable[[set], None] = set_process_cores,
                 clock: Callable[[], float] = time.monotonic):
        self.narrow, self.wide = set(narrow), set(wide)
        self.latency_pools = frozenset(latency_pools)
        self.loop, self.linger_s, self.apply, self.clock = loop, linger_s, apply, clock
        self.narrowed = False
        self.last = 0.0       # when the last latency request was sent

    def request(self, pool: str) -> None:
        if pool not in self.latency_pools:
            return
        self.last = self.clock()
        if not self.narrowed:
            self._set(True)
            self.loop.call_later(self.linger_s, self._maybe_widen)

    def _maybe_widen(self) -> None:
        quiet = self.clock() - self.last
        if quiet >= self.linger_s:
            self._set(False)
        else:
            self.loop.call_later(self.linger_s - quiet, self._maybe_widen)

    def _set(self, narrow: bool) -> None:
        self.apply(self.narrow if narrow else self.wide)
        self.narrowed = narrow
        log.debug("facade on cores %s (%s)", sorted(self.narrow if narrow else self.wide),
                  "latency pools served" if narrow else f"no latency request for {self.linger_s:g} s")


def from_args(text: str, pools: Iterable[str], loop) -> Optional[FacadeCores]:
    """--latency-cpus '2,3' and the service's pool names -> FacadeCores; None when there is nothing to do."""
    if not text:
        return None
    from common.families import family_of
    wide = os.sched_getaffinity(0)
    narrow = {int(c) for c in text.split(",") if c.strip()} & wide
    latency = [p for p in pools if p and family_of(p).latency]
    if not narrow or narrow == wide or not latency:
        return None
    return FacadeCores(narrow, wide, latency, loop)
