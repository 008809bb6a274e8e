"""Direct replies (common/wire.py DONE): a request's terminal reply goes from the worker straight to the
facade's reply socket named in the REQUEST header `reply`, and the broker is told DONE, which frees the
worker's credit. Requests with partials, and headers naming a socket outside the run folder, keep the
broker's path. The facade ignores a second terminal reply of a request and releases its slot once.
"""
from __future__ import annotations

import asyncio
import os
import socket

import pytest
import zmq

from common import wire as P
from facade.broker_client import BrokerClient, reply_endpoint_for
from protos import ml_inference_pb2 as ML
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


def _wait_direct(peer: Peer, pull: zmq.Socket, endpoint: str) -> None:
    """Until the (only) handler thread's PUSH to this endpoint is connected: one reply came directly."""
    for _ in range(200):
        rid = _echo(peer, endpoint, payload=b"warm-up")
        if pull.poll(200):
            pull.recv_multipart()
            return
        peer.recv_terminal(rid)
    pytest.fail("no direct reply")


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
        # a handler thread's first replies to a new endpoint go through the broker (its PUSH is still
        # connecting): warm up until one comes directly
        _wait_direct(peer, pull, endpoint)
        # then 14 requests at once, 14 > the worker's 1 credit: each DONE must free one
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
        _wait_direct(peer, pull, endpoint)
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


def test_a_load_or_unload_replies_behind_its_registry_change(svc):
    """LoadModel / UnloadModel answer through the broker, after the LOADED / UNLOADED they caused (same
    socket): a GetLoadedModels sent when the answer arrives lists the change. A direct reply could overtake
    it (CI once saw a model missing from GetLoadedModels right after its LoadModel succeeded). The next
    request of the same handler thread goes straight to the facade again."""
    run_dir = run_dir_of(svc.proc.pid)
    endpoint = f"ipc://{run_dir}/reply-test{os.getpid()}c.sock"
    pull = _pull(endpoint)
    dgram_path = f"{run_dir}/reply-test{os.getpid()}c.dgram"
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(dgram_path)
    dgram.setblocking(False)
    peer = Peer(f"ipc://{run_dir}/frontend.sock")
    try:
        _wait_direct(peer, pull, endpoint)
        for method, message in (("ml.ModelManagementService/LoadModel",
                                 ML.LoadModelRequest(model_id="ordered", pipeline_type="fake")),
                                ("ml.ModelManagementService/UnloadModel", ML.UnloadModelRequest(model_id="ordered"))):
            rid = peer.request(method, "fake", message.SerializeToString(), model="ordered", reply=endpoint,
                               reply_dgram=dgram_path)
            command, header, _ = peer.recv_terminal(rid)
            assert command == P.FINAL, header
            assert not pull.poll(200), f"{method} replied directly"
            with pytest.raises(BlockingIOError):
                dgram.recv(65536)
        _wait_direct(peer, pull, endpoint)
    finally:
        peer.close()
        pull.close(0)
        dgram.close()
        os.unlink(dgram_path)


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


# ---- the datagram lane (common/wire.py DATAGRAM_MAX): small terminal replies as one unix datagram ----------

def _dgram(path: str):
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    return sock


def test_datagram_framing_round_trips_and_refuses_what_does_not_add_up():
    parts = P.encode(P.FINAL, {"id": "r"}, [b"abc", memoryview(b"defg")])
    data = b"".join(bytes(b) for b in P.datagram_buffers(parts))
    assert P.datagram_size(P.datagram_buffers(parts)) == len(data)
    assert P.split_datagram(data) == [bytes(p) for p in parts]
    for bad in (b"", b"\x01\x00", data[:-1], data + b"x", b"\xff\xff\xff\xff" + data[4:]):
        with pytest.raises(P.ProtocolError):
            P.split_datagram(bad)


def test_small_terminal_replies_come_as_datagrams_and_done_frees_the_credit(svc):
    run_dir = run_dir_of(svc.proc.pid)
    path = f"{run_dir}/reply-test{os.getpid()}d.dgram"
    sock = _dgram(path)
    peer = Peer(f"ipc://{run_dir}/frontend.sock")
    try:
        # 14 requests at once on a worker with 1 credit: every DONE must free it, every reply comes once
        sent = [peer.request("pythonml.v1.Diagnostics/Echo", "fake",
                             X.EchoRequest(pool="fake", payload=b"d%d" % i).SerializeToString(), reply_dgram=path)
                for i in range(14)]
        got = {}
        while len(got) < len(sent):
            command, header, frames = P.decode(P.split_datagram(sock.recv(P.DATAGRAM_MAX)), P.TO_FACADE_COMMANDS)
            assert command == P.FINAL and header["id"] not in got
            got[header["id"]] = X.EchoReply.FromString(frames[0]).payload
        assert got == {rid: b"d%d" % i for i, rid in enumerate(sent)}
        assert not peer.sock.poll(300), "the broker forwarded a reply the worker sent directly"
    finally:
        peer.close()
        sock.close()
        os.unlink(path)


def test_a_reply_over_the_datagram_limit_takes_zeromq(svc):
    run_dir = run_dir_of(svc.proc.pid)
    path = f"{run_dir}/reply-test{os.getpid()}e.dgram"
    sock = _dgram(path)
    peer = Peer(f"ipc://{run_dir}/frontend.sock")
    try:
        big = b"b" * (P.DATAGRAM_MAX + 1)
        rid = peer.request("pythonml.v1.Diagnostics/Echo", "fake",
                           X.EchoRequest(pool="fake", payload=big).SerializeToString(), reply_dgram=path)
        command, _, frames = peer.recv_terminal(rid)
        assert command == P.FINAL and X.EchoReply.FromString(frames[0]).payload == big
        rid = peer.request("pythonml.v1.Diagnostics/Echo", "fake",
                           X.EchoRequest(pool="fake", payload=b"small").SerializeToString(), reply_dgram=path)
        command, header, _ = P.decode(P.split_datagram(sock.recv(P.DATAGRAM_MAX)), P.TO_FACADE_COMMANDS)
        assert (command, header["id"]) == (P.FINAL, rid)
    finally:
        peer.close()
        sock.close()
        os.unlink(path)


def test_a_full_datagram_queue_sends_the_rest_through_zeromq(svc):
    """Nobody reads the datagram socket: once its queue is full (net.unix.max_dgram_qlen), the worker's
    send fails at once (EAGAIN) and each further reply takes the broker's path; none is lost or doubled."""
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            qlen = int(f.read())
    except OSError:
        pytest.skip("no /proc/sys/net/unix/max_dgram_qlen")
    run_dir = run_dir_of(svc.proc.pid)
    path = f"{run_dir}/reply-test{os.getpid()}f.dgram"
    sock = _dgram(path)
    peer = Peer(f"ipc://{run_dir}/frontend.sock")
    total = qlen + 30
    try:
        sent = [peer.request("pythonml.v1.Diagnostics/Echo", "fake",
                             X.EchoRequest(pool="fake", payload=b"q%d" % i).SerializeToString(), reply_dgram=path)
                for i in range(total)]
        got = {"broker": [], "datagram": []}
        while len(got["broker"]) < total - qlen - 1:   # at most qlen + 1 fit in the queue: the rest come so
            command, header, _ = peer.recv()
            if command != P.POOLS:
                got["broker"].append(header["id"])
        poller = zmq.Poller()
        poller.register(peer.sock, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        while len(got["broker"]) + len(got["datagram"]) < total:   # the queue read now: the rest either way
            events = dict(poller.poll(10000))
            assert events, "a reply is missing"
            if peer.sock in events:
                command, header, _ = peer.recv()
                if command != P.POOLS:
                    got["broker"].append(header["id"])
            if sock.fileno() in events:
                command, header, _ = P.decode(P.split_datagram(sock.recv(P.DATAGRAM_MAX)), P.TO_FACADE_COMMANDS)
                got["datagram"].append(header["id"])
        assert not poller.poll(300), "a second reply"
        assert got["datagram"] and sorted(got["broker"] + got["datagram"]) == sorted(sent)
    finally:
        peer.close()
        sock.close()
        os.unlink(path)


def test_a_datagram_path_outside_the_run_folder_or_without_a_socket_is_not_used(svc, tmp_path):
    run_dir = run_dir_of(svc.proc.pid)
    outside = f"{tmp_path}/reply-x.dgram"
    sock = _dgram(outside)
    peer = Peer(f"ipc://{run_dir}/frontend.sock")
    try:
        for path in (outside, f"{run_dir}/reply-nobody.dgram"):
            for _ in range(3):
                rid = peer.request("pythonml.v1.Diagnostics/Echo", "fake",
                                   X.EchoRequest(pool="fake", payload=b"x").SerializeToString(), reply_dgram=path)
                command, _, _ = peer.recv_terminal(rid)   # through the broker
                assert command == P.FINAL
        sock.settimeout(0.2)
        with pytest.raises(OSError):
            sock.recv(P.DATAGRAM_MAX)
    finally:
        peer.close()
        sock.close()


def test_facade_reads_reply_datagrams_and_counts_a_malformed_one(tmp_path):
    import socket

    async def main():
        client = BrokerClient(f"ipc://{tmp_path}/frontend.sock", None)
        assert client.dgram_path == f"{tmp_path}/reply-{os.getpid()}.dgram"
        client._loop = asyncio.get_running_loop()
        fut = client._loop.create_future()
        client._waiters["r1"] = fut
        out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        out.sendto(b"\x05\x00\x00\x00junk", client.dgram_path)
        out.sendmsg(P.datagram_buffers(P.encode(P.FINAL, {"id": "r1"}, [b"answer"])), (), 0, client.dgram_path)
        client._drain_datagrams()
        assert client.malformed == 1
        command, _, frames = fut.result()
        assert (command, frames) == (P.FINAL, [b"answer"])
        out.close()
        client.sock.close(0)
        client.replies.close(0)
        client.dgram.close()
    asyncio.run(main())


def test_facade_without_datagram_replies_when_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_DGRAM_REPLIES", "0")
    client = BrokerClient(f"ipc://{tmp_path}/frontend.sock", None)
    # the socket stays for datagram requests (PML_DGRAM_HOPS), but no request names it for replies
    assert client.dgram is not None and not client._dgram_replies and client.reply_endpoint
    client.sock.close(0)
    client.replies.close(0)
    client.dgram.close()
    monkeypatch.setenv("PML_DGRAM_HOPS", "0")
    client = BrokerClient(f"ipc://{tmp_path}/frontend.sock", None)
    assert client.dgram is None and client.dgram_path == "" and client.reply_endpoint
    client.sock.close(0)
    client.replies.close(0)
