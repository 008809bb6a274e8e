"""facade/cores.py: the facade keeps to the idle pools' cores while a latency pool is served and has every core
again after LINGER_S without one; driven here by a fake clock and loop (the running service is checked in
tests/test_cpu_policy.py)."""
from __future__ import annotations

import os

from facade import cores
from facade.cores import FacadeCores


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Loop:
    """call_later on the fake clock; run_next moves the clock to the next timer and runs it."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.timers: list = []

    def call_later(self, delay, fn):
        self.timers.append((self.clock.now + delay, fn))

    def run_next(self, clock) -> None:
        due, fn = self.timers.pop(0)
        clock.now = due
        fn()


def make(linger=2.0):
    clock, applied = Clock(), []
    loop = Loop(clock)
    fc = FacadeCores({1}, {0, 1}, ["vision", "litert"], loop, linger_s=linger, apply=applied.append, clock=clock)
    return fc, loop, clock, applied


def test_only_latency_pools_narrow_and_only_once():
    fc, loop, clock, applied = make()
    fc.request("hf")
    fc.request("")
    assert applied == [] and not fc.narrowed and loop.timers == []
    fc.request("vision")
    fc.request("litert")
    fc.request("vision")
    assert applied == [{1}] and fc.narrowed and len(loop.timers) == 1


def test_widens_after_the_linger_and_not_before():
    fc, loop, clock, applied = make(linger=2.0)
    fc.request("vision")
    clock.now += 1.5
    fc.request("vision")                 # a frame 1.5 s later: the check at 2 s finds 0.5 s of quiet
    loop.run_next(clock)
    assert applied == [{1}] and fc.narrowed
    assert loop.timers[0][0] == 103.5    # and looks again when 2 s will have passed since that frame
    loop.run_next(clock)
    assert applied == [{1}, {0, 1}] and not fc.narrowed and loop.timers == []
    fc.request("vision")                 # the next stream narrows again
    assert applied == [{1}, {0, 1}, {1}]


def test_nothing_to_do_without_cores_or_latency_pools():
    loop = Loop(Clock())
    every = os.sched_getaffinity(0)
    assert cores.from_args("", ["vision", "hf"], loop) is None
    assert cores.from_args(",".join(map(str, every)), ["vision", "hf"], loop) is None   # already every core
    some = str(min(every))
    if len(every) > 1:
        assert cores.from_args(some, ["hf"], loop) is None                 # no latency pool to keep off
        fc = cores.from_args(some, ["hf", "vision"], loop)
        assert fc.narrow == {min(every)} and fc.wide == every and fc.latency_pools == {"vision"}


def test_set_process_cores_moves_every_thread():
    import threading
    every = os.sched_getaffinity(0)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        one = {min(every)}
        cores.set_process_cores(one)
        assert all(os.sched_getaffinity(int(tid)) == one for tid in os.listdir("/proc/self/task"))
    finally:
        cores.set_process_cores(every)
        stop.set()
        t.join()
    assert os.sched_getaffinity(0) == every
