"""The router's side of remote workers (issue 18), without processes: a frame that the facade put in shared
memory reaches a remote worker inline (another node cannot map our memory) and prefers a local worker,
and a worker counted dead that speaks again (it was behind a partition, a successor took its place) is
fenced: its messages are dropped and it is told, once, to stop."""
from __future__ import annotations

import os

import pytest
import zmq

from common import wire as P
from common.payload import INLINE, SHM
from shm.pool import SlotAllocator, SlotReader, create_pool_fd
from tests.router_rig import RouterRig

SLOTS, SLOT_SIZE = 4, 2**20


@pytest.fixture
def rig():
    fd = create_pool_fd(SLOTS, SLOT_SIZE)
    r = RouterRig(shm_reader=SlotReader(fd, SLOTS, SLOT_SIZE))
    yield r.router, r.worker, r.pump, r.dealer(b"facade-1"), SlotAllocator(fd, SLOTS, SLOT_SIZE)
    r.close()
    os.close(fd)


def send_frame_request(facade, alloc, rid: str, data: bytes) -> None:
    ref = alloc.put(data)
    facade.send_multipart(P.encode(P.REQUEST, {"id": rid, "method": "pythonml.v1.Diagnostics/Echo", "pool": "fake",
                                               SHM: ref.to_wire()}, [b"payload"]))


def received(sock) -> tuple:
    assert sock.poll(5000), "nothing arrived"
    return P.decode(sock.recv_multipart(), {P.REQUEST, P.STOP, P.CANCEL, P.STREAM_CLOSE})


def test_shm_frame_prefers_local_then_goes_inline_to_a_remote_worker(rig):
    router, worker, pump, facade, alloc = rig
    remote, remote_sock = worker("fake@cpu#0.1", remote=True)     # first in the pool: ties go to it
    local, local_sock = worker("fake@cpu#1.1", remote=False)
    assert remote.pid == 4242, "a remote worker's pid comes from its READY"
    data = os.urandom(100_000)
    send_frame_request(facade, alloc, "r1", data)
    pump(lambda: "r1" in local.inflight)
    command, header, frames = received(local_sock)
    assert SHM in header and len(frames) == 1, "a local worker reads the frame from shared memory"
    send_frame_request(facade, alloc, "r2", data)                 # the local worker is full now
    pump(lambda: "r2" in remote.inflight)
    command, header, frames = received(remote_sock)
    assert command == P.REQUEST and header[INLINE] is True and SHM not in header
    assert bytes(frames[1]) == data and bytes(frames[0]) == b"payload"


def test_a_dead_worker_that_speaks_again_is_told_to_stop_once(rig):
    router, worker, pump, facade, alloc = rig
    ws, sock = worker("fake@cpu#0.1", remote=True)
    router.worker_exited(ws, "gone", "gone")
    sock.send_multipart(P.encode(P.HEARTBEAT, {"pid": 4242}))
    pump(lambda: router.retired.get("fake@cpu#0.1"))
    command, _, _ = received(sock)
    assert command == P.STOP
    before = router.counters["malformed"]
    sock.send_multipart(P.encode(P.HEARTBEAT, {"pid": 4242}))
    sock.send_multipart(P.encode(P.FINAL, {"id": "late"}))
    for _ in range(21):
        pump(lambda: True)
    assert not sock.poll(200), "told only once"
    assert router.counters["malformed"] == before, "a fenced worker's messages are not counted as malformed"
    # an id the router never knew is dropped and counted, never told anything
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.setsockopt(zmq.IDENTITY, b"nobody")
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(router.backend.getsockopt_string(zmq.LAST_ENDPOINT))
    stranger.send_multipart(P.encode(P.HEARTBEAT, {}))
    pump(lambda: router.counters["malformed"] == before + 1)
    assert not stranger.poll(200)
    stranger.close(0)
