"""Direct replies (common/wire.py DONE): a request's terminal reply goes from the worker straight to the
facade's reply socket named in the REQUEST header `reply`, and the broker is told DONE, which frees the
worker's credit. Requests with partials, and headers naming a socket outside the run folder, keep the
broker's path. The facade ignores a second terminal reply of a request and releases its slot once.
"""
from __future__ import annotations

import asyncio
import os

import pytest
import zmq

from common import wire as P
from facade.broker_client import BrokerClient, reply_endpoint_for
from protos import pythonml_pb2 as X
from tests.broker_peer import Peer, run_dir_of
from tests.service import start_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def svc():
    s = start_service(["--pools", "fake"], env={"PML_FAKE_CAPACITY": "1"})
    yield s
    assert s.stop() == 0


def _pull(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def _echo(peer: Peer, reply: str, **fields) -> str:
    payload = X.EchoRequest(pool="fake", **fields).SerializeToString()
    return peer.request("pythonml.v1.Diagnostics/Echo", "fake", payload, reply=reply)


def test_terminal_replies_go_straight_to_the_facade_and_done_frees_the_credit(svc):
    run_dir = run_dir_of(svc.proc.pid)
    endpoint = f"ipc://{run_dir}/reply-test{os.getpid()}.sock"
    pull = _pull(endpoint)
    peer = Peer(f"ipc://{run_dir}/frontend.sock")
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(peer.sock, zmq.POLLIN)
    answers: dict = {}   # request id -> ["direct" | "broker", ...]: every terminal reply seen
    try:
        # a handler thread's first reply to a new endpoint goes through the broker (its PUSH is still
        # connecting); then 14 requests at once, 14 > the worker's 1 credit: each DONE must free one
        sent = [_echo(peer, endpoint, payload=b"n%d" % i) for i in range(14)]
        while sum(len(v) for v in answers.values()) < len(sent):
            events = dict(poller.poll(10000))
            assert events, f"no reply for {set(sent) - set(answers)}"
            for sock, path in ((pull, "direct"), (peer.sock, "broker")):
                if sock in events:
                    command, header, _ = P.decode(sock.recv_multipart(), P.TO_FACADE_COMMANDS)
                    if command != P.POOLS:
                        assert command == P.FINAL
                        answers.setdefault(header["id"], []).append(path)
        assert not poller.poll(300), "a second terminal reply"
        assert sorted(answers) == sorted(sent) and all(len(v) == 1 for v in answers.values())
        assert sum(v == ["direct"] for v in answers.values()) >= 7
    finally:
        peer.close()
        pull.close(0)


def test_partials_keep_the_broker_path_so_nothing_overtakes_them(svc):
    run_dir = run_dir_of(svc.proc.pid)
    endpoint = f"ipc://{run_dir}/reply-test{os.getpid()}b.sock"
    pull = _pull(endpoint)
    peer = Peer(f"ipc://{run_dir}/frontend.sock")
    try:
        for _ in range(200):   # until the (only) handler thread's socket to this endpoint is connected
            rid = _echo(peer, endpoint, payload=b"warm-up")
            if pull.poll(200):
                pull.recv_multipart()
                break
            peer.recv_terminal(rid)
        else:
            pytest.fail("no direct reply")
        rid = _echo(peer, endpoint, action="stream", parts=3)
        seen = []
        while True:
            command, header, _ = peer.recv()
            if header.get("id") == rid:
                seen.append(command)
                if command != P.PARTIAL:
                    break
        assert seen == [P.PARTIAL] * 3 + [P.FINAL]
        assert not pull.poll(300)
    finally:
        peer.close()
        pull.close(0)


def test_a_reply_socket_outside_the_run_folder_is_never_used(svc, tmp_path):
    run_dir = run_dir_of(svc.proc.pid)
    outside = f"ipc://{tmp_path}/reply-x.sock"
    pull = _pull(outside)
    peer = Peer(f"ipc://{run_dir}/frontend.sock")
    try:
        for _ in range(3):
            rid = _echo(peer, outside, payload=b"x")
            command, header, _ = peer.recv_terminal(rid)
            assert command == P.FINAL
        assert not pull.poll(200)
    finally:
        peer.close()
        pull.close(0)


class _Allocator:
    def __init__(self):
        self.released = []

    def release(self, ref):
        self.released.append(ref)


def test_facade_takes_the_first_terminal_reply_and_ignores_a_duplicate(tmp_path):
    assert reply_endpoint_for(f"ipc://{tmp_path}/frontend.sock") == f"ipc://{tmp_path}/reply-{os.getpid()}.sock"
    assert reply_endpoint_for("tcp://127.0.0.1:5555") == ""

    async def main():
        alloc = _Allocator()
        client = BrokerClient(f"ipc://{tmp_path}/frontend.sock", alloc)
        client._loop = asyncio.get_running_loop()
        fut = client._loop.create_future()
        client._waiters["r1"] = fut
        client._slots["r1"] = "slot-1"
        final = P.encode(P.FINAL, {"id": "r1"}, [b"answer"])
        late = P.encode(P.ERROR, P.error_header("r1", "UNAVAILABLE", "worker died"))
        client._on_message(final)   # the direct reply
        client._on_message(late)    # the broker's, for a worker that died before its DONE
        command, _, frames = fut.result()
        assert (command, frames) == (P.FINAL, [b"answer"])
        assert alloc.released == ["slot-1"]
        assert client.inflight() == 0
        client.sock.close(0)
        client.replies.close(0)
    asyncio.run(main())
