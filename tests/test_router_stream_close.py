"""The router keeps a stream's order at its close: a STREAM_CLOSE that comes while frames of that stream
still wait in the broker's queue for a credit reaches the worker after them (they are served, not answered
"already closed"); with nothing queued it goes at once; a queued frame cancelled or dropped lets it go."""
from __future__ import annotations

import pytest

from common import wire as P
from tests.router_rig import RouterRig

ECHO = "pythonml.v1.Diagnostics/Echo"
TO_WORKER = {P.REQUEST, P.STOP, P.CANCEL, P.STREAM_CLOSE}


@pytest.fixture
def rig(monkeypatch):
    monkeypatch.setenv("PML_DGRAM_HOPS", "0")   # one channel per side: the order seen is the order sent
    r = RouterRig()
    ws, worker = r.worker("fake-cpu-0.1")
    facade = r.dealer(b"facade-1")
    yield r.router, ws, worker, facade, r
    r.close()


def frame(facade, rid: str, stream: str = "s1") -> None:
    facade.send_multipart(P.encode(P.REQUEST, {"id": rid, "method": ECHO, "pool": "fake", "stream": stream}, [b""]))


def received(worker) -> list:
    out = []
    while worker.poll(100):
        command, header, _ = P.decode(worker.recv_multipart(), TO_WORKER)
        out.append((command, header.get("id") or header.get("stream")))
    return out


def test_a_close_waits_for_the_streams_queued_frames(rig):
    router, ws, worker, facade, r = rig
    frame(facade, "f1")
    frame(facade, "f2")                       # capacity 1: f2 waits in the queue
    r.pump(lambda: "f2" in router.requests and "f1" in ws.inflight)
    facade.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": "s1"}))
    r.settle()                                 # let the router take the close
    assert received(worker) == [(P.REQUEST, "f1")]     # no close yet: f2 is still queued
    worker.send_multipart(P.encode(P.FINAL, {"id": "f1"}, [b""]))
    r.pump(lambda: "s1" not in router.streams)
    assert received(worker) == [(P.REQUEST, "f2"), (P.STREAM_CLOSE, "s1")]
    assert not router.closing


def test_a_close_with_nothing_queued_goes_at_once(rig):
    router, ws, worker, facade, r = rig
    frame(facade, "f1")
    r.pump(lambda: "f1" in ws.inflight)
    facade.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": "s1"}))
    r.pump(lambda: "s1" not in router.streams)
    assert received(worker) == [(P.REQUEST, "f1"), (P.STREAM_CLOSE, "s1")]
    assert not router.closing


def test_cancelling_the_last_queued_frame_lets_the_close_go(rig):
    router, ws, worker, facade, r = rig
    frame(facade, "f1")
    frame(facade, "f2")
    r.pump(lambda: "f2" in router.requests and "f1" in ws.inflight)
    facade.send_multipart(P.encode(P.CANCEL, {"id": "f2"}))
    facade.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": "s1"}))
    r.pump(lambda: "s1" not in router.streams)
    assert received(worker) == [(P.REQUEST, "f1"), (P.STREAM_CLOSE, "s1")]
    # the order the other way round: the close waits, then the cancel of its last queued frame releases it
    frame(facade, "g1", stream="s2")
    frame(facade, "g2", stream="s2")
    worker.send_multipart(P.encode(P.FINAL, {"id": "f1"}, [b""]))
    r.pump(lambda: "g1" in ws.inflight and "g2" in router.requests)
    facade.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": "s2"}))
    r.pump(lambda: "s2" in router.closing)
    facade.send_multipart(P.encode(P.CANCEL, {"id": "g2"}))
    r.pump(lambda: not router.closing)
    assert received(worker) == [(P.REQUEST, "g1"), (P.STREAM_CLOSE, "s2")]
