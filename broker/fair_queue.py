"""A pool's queue with one FIFO sub-queue per caller, served round robin (fairness between callers).

A caller is one gRPC client connection (the facade tags each REQUEST with it). The router owns one
FairQueue per pool and makes every dispatch decision through `serve`, which hands out free worker
credit one request per caller per round, so one caller's hundreds of queued requests cannot delay
another caller by more than about one request per caller ahead of it. A caller that had nothing queued
enters the rotation first (a light caller is served before a busy one, as in FQ-CoDel's new flows).

Admission (`offer`) bounds the queue per pool AND per caller: a caller may hold at most `caller_limit`
queued requests (0 = no fixed cap), and when the pool's queue is full a caller below its fair share
(limit / callers queued) still gets in: the newest request of the caller holding the most is shed
(RESOURCE_EXHAUSTED) to make room. A caller at or above its share is refused at once.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Iterator, Optional


class FairQueue:
    def __init__(self, pool: str, limit: int, caller_limit: int = 0):
        self.pool = pool
        self.limit = max(1, int(limit))
        self.caller_limit = max(0, int(caller_limit))
        self.subs: "OrderedDict[str, deque]" = OrderedDict()   # caller -> its requests; order = rotation
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator:
        for q in self.subs.values():
            yield from q

    def callers(self) -> int:
        return len(self.subs)

    def queued(self, caller: str) -> int:
        q = self.subs.get(caller)
        return len(q) if q else 0

    # ---------------------------------------------------------------- admission
    def offer(self, req) -> tuple[bool, Optional[object], str]:
        """Queue `req` (its `caller` attribute picks the sub-queue) if the limits allow.

        Returns (accepted, shed, refusal): `shed` is a queued request of another caller removed to make
        room (the caller must answer it RESOURCE_EXHAUSTED); `refusal` explains a refusal."""
        caller = req.caller
        mine = self.queued(caller)
        if self.caller_limit and mine >= self.caller_limit:
            return False, None, (f"this client already has {mine} requests queued for the {self.pool} pool "
                                 f"(limit {self.caller_limit} per client); retry later or lower the request rate")
        shed = None
        if self.size >= self.limit:
            active = len(self.subs) + (0 if mine else 1)
            share = max(1, self.limit // active)
            if mine >= share:
                return False, None, (f"the {self.pool} pool is saturated: {self.size} requests already queued "
                                     f"(limit {self.limit}), {mine} of them this client's (fair share {share} with "
                                     f"{active} clients waiting); retry later or lower the request rate")
            hog = max(self.subs, key=lambda c: len(self.subs[c]))
            shed = self.subs[hog].pop()
            self.size -= 1
            if not self.subs[hog]:
                del self.subs[hog]
        self.push(req)
        return True, shed, ""

    def shed_message(self, req) -> str:
        return (f"the {self.pool} pool is saturated and this client holds the most queued requests "
                f"({self.queued(req.caller) + 1}); this one was shed to make room for another client's request "
                f"within its fair share of the queue (limit {self.limit}); retry later or lower the request rate")

    def push(self, req) -> None:
        q = self.subs.get(req.caller)
        if q is None:
            q = self.subs[req.caller] = deque()
            self.subs.move_to_end(req.caller, last=False)   # a caller new to the queue goes first
        q.append(req)
        self.size += 1

    # ---------------------------------------------------------------- removal
    def remove(self, req) -> None:
        """Remove a queued request; ValueError when it is not queued (like list.remove)."""
        q = self.subs.get(req.caller)
        if q is None:
            raise ValueError("request is not queued")
        q.remove(req)
        self.size -= 1
        if not q:
            del self.subs[req.caller]

    def sweep(self, drop: Callable[[object], bool]) -> list:
        """Remove and return every queued request for which `drop(req)` is true (expired, orphaned...)."""
        out = []
        for caller in list(self.subs):
            q = self.subs[caller]
            if not any(drop(r) for r in q):
                continue
            keep = deque()
            for r in q:
                (out if drop(r) else keep).append(r)
            if keep:
                self.subs[caller] = keep
            else:
                del self.subs[caller]
        self.size -= len(out)
        return out

    # ---------------------------------------------------------------- dispatch
    def serve(self, take: Callable[[object], bool], has_room: Callable[[], bool]) -> int:
        """Hand out free credit round robin: each round visits every caller once and `take`s the first of
        its requests (in arrival order) that a worker accepts; a caller served moves to the back of the
        rotation. Stops when `has_room()` is false or a whole round takes nothing. Returns how many."""
        taken = 0
        stuck: set = set()   # callers none of whose requests could be taken in this pass
        while self.subs and has_room():
            progress = False
            for caller in list(self.subs):
                if caller in stuck:
                    continue
                if not has_room():
                    return taken
                q = self.subs[caller]
                for i, req in enumerate(q):
                    if take(req):
                        del q[i]
                        self.size -= 1
                        taken += 1
                        progress = True
                        if q:
                            self.subs.move_to_end(caller)
                        else:
                            del self.subs[caller]
                        break
                    if not has_room():
                        return taken
                else:
                    stuck.add(caller)
            if not progress:
                break
        return taken
