"""Worker base: a stream handler's `prepare` stage (a video frame's decode) runs one frame ahead of its step.

Driven in process: a Worker without sockets, frames handed to `_dispatch` as the I/O thread does, replies
read from its out-queue. Each test waits on events with a timeout, never on a clock: frame k's step waits
until frame k+1's prepare has started (the overlap exists), prepares and steps each stay in order and one at
a time, a prepare queued behind busy threads is taken back and run inline (one handler thread: no deadlock),
a prepare's error is that frame's answer, and a stream closed meanwhile is closed after its prepares.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from common import wire as P
from workers.base import Worker, worker_arg_parser
from workers.context import WorkerError

METHOD = "test.Stream/Frames"
WAIT = 10.0   # seconds an event may take before the test fails (a missing overlap, a deadlock)


def make_worker(handler) -> Worker:
    args = worker_arg_parser("test").parse_args(["--connect", "ipc:///nonexistent/backend.sock", "--worker-id", "t"])
    w = Worker(args)
    w._handlers = {METHOD: handler}
    return w


def send_frames(w: Worker, executor, n: int, stream: str = "s1", start: int = 0) -> None:
    for i in range(start, start + n):
        w._dispatch(executor, P.REQUEST, {"id": f"r{i}", "method": METHOD, "stream": stream}, [str(i).encode()])


def replies(w: Worker, n: int) -> list:
    """The first n terminal replies: (command, request id, payload or error message)."""
    out = []
    while len(out) < n:
        command, header, frames = P.decode(w._outq.get(timeout=WAIT), P.WORKER_COMMANDS)
        if command in (P.FINAL, P.ERROR):
            out.append((command, header["id"], bytes(frames[0]) if frames else header.get("message")))
    return out


class Staged:
    """prepare: the frame's number (logged, one at a time); step: the number doubled. `overlap`: frame k's
    step waits until frame k+1's prepare has begun (for k < last)."""

    def __init__(self, last: int, overlap: bool = True, fail_at: int = -1):
        self.last, self.overlap, self.fail_at = last, overlap, fail_at
        self.log: list = []
        self.lock = threading.Lock()
        self.preparing = 0
        self.most_preparing = 0
        self.started = {i: threading.Event() for i in range(last + 1)}
        self.threads: dict = {}

    def prepare(self, ctx) -> int:
        n = int(ctx.payload)
        with self.lock:
            self.preparing += 1
            self.most_preparing = max(self.most_preparing, self.preparing)
            self.log.append(("prepare", n))
            self.threads[("prepare", n)] = threading.get_ident()
        self.started[n].set()
        try:
            if n == self.fail_at:
                raise WorkerError("INVALID_ARGUMENT", f"frame {n}: cannot be decoded")
            return n
        finally:
            with self.lock:
                self.preparing -= 1

    def __call__(self, ctx) -> bytes:
        n = ctx.prepared.result() if ctx.prepared is not None else self.prepare(ctx)
        with self.lock:
            self.log.append(("step", n))
            self.threads[("step", n)] = threading.get_ident()
        if self.overlap and n < self.last:
            assert self.started[n + 1].wait(WAIT), f"frame {n + 1}'s prepare did not start while frame {n} ran"
        with self.lock:
            self.log.append(("done", n))
        return str(2 * n).encode()


def test_the_next_frames_prepare_overlaps_the_running_step():
    n = 12
    h = Staged(last=n - 1)
    w = make_worker(h)
    with ThreadPoolExecutor(2) as ex:
        send_frames(w, ex, n)
        got = replies(w, n)
    assert got == [(P.FINAL, f"r{i}", str(2 * i).encode()) for i in range(n)]
    assert [e[1] for e in h.log if e[0] == "prepare"] == list(range(n))
    assert [e[1] for e in h.log if e[0] == "step"] == list(range(n))
    assert h.most_preparing == 1
    for k in range(n - 1):   # frame k+1's prepare began after frame k's and before frame k's step ended
        assert h.log.index(("prepare", k)) < h.log.index(("prepare", k + 1)) < h.log.index(("done", k))
    assert any(h.threads[("prepare", k)] != h.threads[("step", k)] for k in range(1, n))


def test_one_handler_thread_prepares_inline_without_deadlock():
    n = 8
    h = Staged(last=n - 1, overlap=False)
    w = make_worker(h)
    with ThreadPoolExecutor(1) as ex:
        send_frames(w, ex, n)
        got = replies(w, n)
    assert got == [(P.FINAL, f"r{i}", str(2 * i).encode()) for i in range(n)]
    assert [e for e in h.log if e[0] != "done"] == [(s, i) for i in range(n) for s in ("prepare", "step")]
    assert len(set(h.threads.values())) == 1   # the one thread: every queued prepare was taken back


def test_a_failed_prepare_is_that_frames_answer():
    n = 5
    h = Staged(last=n - 1, overlap=False, fail_at=2)
    w = make_worker(h)
    with ThreadPoolExecutor(2) as ex:
        send_frames(w, ex, n)
        got = replies(w, n)
    assert [g[:2] for g in got] == [(P.ERROR if i == 2 else P.FINAL, f"r{i}") for i in range(n)]
    assert got[2][2] == "frame 2: cannot be decoded"
    assert [e[1] for e in h.log if e[0] == "step"] == [0, 1, 3, 4]


def test_a_stream_closed_meanwhile_is_closed_after_the_running_prepare():
    events: list = []
    release = threading.Event()
    prepare_1_running = threading.Event()

    class Closer:
        def close(self):
            events.append("closed")

    class Handler:
        def prepare(self, ctx):
            ctx.stream_state.setdefault("decoder", Closer())
            n = int(ctx.payload)
            if n == 1:
                prepare_1_running.set()
                assert release.wait(WAIT)
                events.append("prepare 1 done")
            return n

        def __call__(self, ctx):
            n = ctx.prepared.result()
            if n == 0:
                assert prepare_1_running.wait(WAIT)   # frame 1 is being prepared ahead, on another thread
            return b"ok"

    w = make_worker(Handler())
    with ThreadPoolExecutor(2) as ex:
        send_frames(w, ex, 3)
        assert prepare_1_running.wait(WAIT)
        w._dispatch(ex, P.STREAM_CLOSE, {"stream": "s1"}, [])
        assert events == []             # frame 1 still prepares: its stream's state stays open
        release.set()
        got = replies(w, 3)
    assert [g[1] for g in got] == ["r0", "r1", "r2"]
    assert [g[0] for g in got[1:]] == [P.ERROR, P.ERROR]   # cancelled with their stream (frame 0 may be too)
    assert events == ["prepare 1 done", "closed"]
