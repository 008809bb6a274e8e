"""The router keeps a stream's order at its close: a STREAM_CLOSE that comes while frames of that stream
still wait in the broker's queue for a credit reaches the worker after them (they are served, not answered
"already closed"); with nothing queued it goes at once; a queued frame cancelled or dropped lets it go."""
from __future__ import annotations

import os
import tempfile

import pytest
import zmq

from broker.router import Router, RouterConfig, WorkerState
from common import wire as P

ECHO = "pythonml.v1.Diagnostics/Echo"
TO_WORKER = {P.REQUEST, P.STOP, P.CANCEL, P.STREAM_CLOSE}


class Events:
    def worker_ready(self, ws): pass
    def model_loaded(self, *a): pass
    def model_unloaded(self, *a): pass
    def facade_hello(self, header): pass
    def view(self, name): return {}


@pytest.fixture
def rig(monkeypatch):
    monkeypatch.setenv("PML_DGRAM_HOPS", "0")   # one channel per side: the order seen is the order sent
    folder = tempfile.mkdtemp(prefix="pml-close-")
    router = Router(RouterConfig(frontend=f"ipc://{folder}/f.sock", backend=f"ipc://{folder}/b.sock"), Events())
    router.add_pool_slot("fake", "cpu")
    ctx = zmq.Context.instance()
    ws = WorkerState(worker_id="fake-cpu-0.1", pool="fake", device="cpu", index=0)
    router.worker_started(ws)
    worker = ctx.socket(zmq.DEALER)
    worker.setsockopt(zmq.IDENTITY, ws.worker_id.encode())
    facade = ctx.socket(zmq.DEALER)
    facade.setsockopt(zmq.IDENTITY, b"facade-1")
    for s, ep in ((worker, "b.sock"), (facade, "f.sock")):
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"ipc://{folder}/{ep}")
    poller = zmq.Poller()
    poller.register(router.backend, zmq.POLLIN)
    poller.register(router.frontend, zmq.POLLIN)

    def pump(done):
        for _ in range(300):
            router.on_readable(dict(poller.poll(10)))
            if done():
                return
        raise AssertionError("the router did not get there")

    worker.send_multipart(P.encode(P.READY, {"capacity": 1, "pid": 4242}))
    pump(lambda: ws.state == "ready")
    yield router, ws, worker, facade, pump
    worker.close(0)
    facade.close(0)
    router.close()
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)


def frame(facade, rid: str, stream: str = "s1") -> None:
    facade.send_multipart(P.encode(P.REQUEST, {"id": rid, "method": ECHO, "pool": "fake", "stream": stream}, [b""]))


def received(worker) -> list:
    out = []
    while worker.poll(100):
        command, header, _ = P.decode(worker.recv_multipart(), TO_WORKER)
        out.append((command, header.get("id") or header.get("stream")))
    return out


def test_a_close_waits_for_the_streams_queued_frames(rig):
    router, ws, worker, facade, pump = rig
    frame(facade, "f1")
    frame(facade, "f2")                       # capacity 1: f2 waits in the queue
    pump(lambda: "f2" in router.requests and "f1" in ws.inflight)
    facade.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": "s1"}))
    for _ in range(20):                        # let the router take the close
        pump(lambda: True)
    assert received(worker) == [(P.REQUEST, "f1")]     # no close yet: f2 is still queued
    worker.send_multipart(P.encode(P.FINAL, {"id": "f1"}, [b""]))
    pump(lambda: "s1" not in router.streams)
    assert received(worker) == [(P.REQUEST, "f2"), (P.STREAM_CLOSE, "s1")]
    assert not router.closing


def test_a_close_with_nothing_queued_goes_at_once(rig):
    router, ws, worker, facade, pump = rig
    frame(facade, "f1")
    pump(lambda: "f1" in ws.inflight)
    facade.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": "s1"}))
    pump(lambda: "s1" not in router.streams)
    assert received(worker) == [(P.REQUEST, "f1"), (P.STREAM_CLOSE, "s1")]
    assert not router.closing


def test_cancelling_the_last_queued_frame_lets_the_close_go(rig):
    router, ws, worker, facade, pump = rig
    frame(facade, "f1")
    frame(facade, "f2")
    pump(lambda: "f2" in router.requests and "f1" in ws.inflight)
    facade.send_multipart(P.encode(P.CANCEL, {"id": "f2"}))
    facade.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": "s1"}))
    pump(lambda: "s1" not in router.streams)
    assert received(worker) == [(P.REQUEST, "f1"), (P.STREAM_CLOSE, "s1")]
    # the order the other way round: the close waits, then the cancel of its last queued frame releases it
    frame(facade, "g1", stream="s2")
    frame(facade, "g2", stream="s2")
    worker.send_multipart(P.encode(P.FINAL, {"id": "f1"}, [b""]))
    pump(lambda: "g1" in ws.inflight and "g2" in router.requests)
    facade.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": "s2"}))
    pump(lambda: "s2" in router.closing)
    facade.send_multipart(P.encode(P.CANCEL, {"id": "g2"}))
    pump(lambda: not router.closing)
    assert received(worker) == [(P.REQUEST, "g1"), (P.STREAM_CLOSE, "s2")]
