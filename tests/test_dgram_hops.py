"""Datagram hops (docs/ARCHITECTURE.md, "Datagram hops"): requests outside any stream, and their CANCELs, go
facade -> broker -> local worker as unix datagrams; streams keep ZeroMQ. What must hold: a CANCEL sent right
after its REQUEST reaches the handler (the credit comes back), a CANCEL that overtakes its REQUEST anyway is
applied when the REQUEST comes (broker and worker), a stream's frames run in the order sent also when big
(over wire.DATAGRAM_MAX) and small frames mix, a STREAM_CLOSE after a burst closes after its last frame, and
the broker's datagram socket takes nothing from a sender that did not say HELLO (counted, the loop goes on).
"""
from __future__ import annotations

import asyncio
import glob
import os
import socket
import uuid

import pytest
import zmq

from common import wire as P
from facade.broker_client import BrokerClient
from facade.errors import BrokerError
from protos import pythonml_pb2 as X
from tests.broker_peer import run_dir_of
from tests.router_rig import RouterRig
from tests.service import start_service
from workers.base import Worker, worker_arg_parser

ECHO = "pythonml.v1.Diagnostics/Echo"
WAIT = 20.0   # seconds a reply may take before the test fails (a lost CANCEL holds the credit 60 s)


@pytest.fixture(scope="module")
def svc():
    s = start_service(["--pools", "fake"], env={"PML_FAKE_CAPACITY": "1", "PML_FAULT_INJECTION": "1"})
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def wide():
    """16 credits: a burst of a stream's frames all reach the worker at once (none wait in the broker's
    queue: this tests the order on the worker's side)."""
    s = start_service(["--pools", "fake"], env={"PML_FAKE_CAPACITY": "16", "PML_FAULT_INJECTION": "1"})
    yield s
    assert s.stop() == 0


def _echo(**fields) -> bytes:
    return X.EchoRequest(pool="fake", **fields).SerializeToString()


async def _client(svc) -> BrokerClient:
    """A second facade's broker client in this process: HELLO, then wait for the broker's answer naming its
    datagram socket."""
    client = BrokerClient(f"ipc://{run_dir_of(svc.proc.pid)}/frontend.sock", None)
    await client.start({"pid": os.getpid()})
    for _ in range(400):
        if client.broker_dgram:
            return client
        await asyncio.sleep(0.025)
    pytest.fail("the broker did not name its datagram socket in its answer to HELLO")


def _close(client: BrokerClient) -> None:
    client._loop.remove_reader(client.sock.getsockopt(zmq.FD))
    client._loop.remove_reader(client.replies.getsockopt(zmq.FD))
    client._loop.remove_reader(client.dgram.fileno())
    client.sock.close(0)
    client.replies.close(0)
    client.dgram.close()
    os.unlink(client.dgram_path)


@pytest.mark.integration
def test_local_workers_take_requests_by_datagram(svc):
    assert glob.glob(f"{run_dir_of(svc.proc.pid)}/w-fake*.dgram"), "the worker named no datagram socket"

    async def main():
        client = await _client(svc)
        try:
            task = asyncio.ensure_future(client.unary(ECHO, "fake", _echo(payload=b"hi")))
            await asyncio.sleep(0)
            assert client._dgram_rids, "the request did not go as a datagram"
            assert X.EchoReply.FromString(await asyncio.wait_for(task, WAIT)).payload == b"hi"
        finally:
            _close(client)
    asyncio.run(main())


@pytest.mark.integration
def test_a_cancel_right_after_its_request_reaches_the_handler(svc):
    async def main():
        client = await _client(svc)
        try:
            for _ in range(10):
                slow = asyncio.ensure_future(client.unary(ECHO, "fake", _echo(action="sleep", sleep_ms=60_000)))
                await asyncio.sleep(0)    # sent (a datagram), then cancelled at once: CANCEL by datagram too
                assert client._dgram_rids
                slow.cancel()
                # the only credit comes back only when the handler saw the CANCEL (else it sleeps 60 s)
                probe = await asyncio.wait_for(client.unary(ECHO, "fake", _echo(payload=b"after")), WAIT)
                assert X.EchoReply.FromString(probe).payload == b"after"
        finally:
            _close(client)
    asyncio.run(main())


@pytest.mark.integration
def test_a_streams_big_and_small_frames_run_in_the_order_sent(wide):
    async def main():
        client = await _client(wide)
        try:
            stream = uuid.uuid4().hex
            labels = [bytes([65 + i]) for i in range(16)]
            # every third frame is over the datagram limit (it must take ZeroMQ): the others must not pass it
            payloads = [label * (P.DATAGRAM_MAX + 1000 if i % 3 == 1 else 1) for i, label in enumerate(labels)]
            calls = [client.unary(ECHO, "fake", _echo(action="seq", payload=p), stream=stream) for p in payloads]
            answers = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
            for i, raw in enumerate(answers):
                assert X.EchoReply.FromString(raw).payload == b"".join(labels[:i + 1])
            await client.close_stream(stream)
        finally:
            _close(client)
    asyncio.run(main())


@pytest.mark.integration
def test_a_stream_close_after_a_burst_closes_after_its_last_frame(wide):
    async def main():
        client = await _client(wide)
        try:
            for _ in range(5):
                stream = uuid.uuid4().hex
                calls = [asyncio.ensure_future(client.unary(ECHO, "fake", _echo(action="seq", payload=b"x%d" % i),
                                                            stream=stream)) for i in range(12)]
                await asyncio.sleep(0)   # every frame sent, then the close
                await client.close_stream(stream)
                for call in calls:
                    try:
                        await asyncio.wait_for(call, WAIT)
                    except BrokerError as exc:   # a queued frame may be cancelled by the close...
                        assert exc.code == "CANCELLED" and "already closed" not in exc.message, exc.message
                # ...but never reached after it; a frame sent now is refused: the close was applied
                with pytest.raises(BrokerError, match="already closed"):
                    await asyncio.wait_for(client.unary(ECHO, "fake", _echo(action="seq", payload=b"late"),
                                                        stream=stream), WAIT)
        finally:
            _close(client)
    asyncio.run(main())


def test_the_broker_takes_datagrams_only_from_a_facade_that_said_hello_and_applies_an_early_cancel():
    rig = RouterRig()
    router, folder = rig.router, rig.folder
    router.add_pool_slot("fake", "cpu")
    dealer = rig.dealer(b"facade-t")
    me = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    me.bind(f"{folder}/reply-t.dgram")
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    pump = rig.pump

    def send(sock, command, header):
        sock.sendto(b"".join(P.datagram_buffers(P.encode(command, header, [b""]))), router.dgram.getsockname())

    try:
        request = {"id": "r1", "method": ECHO, "pool": "fake", "stream": None}
        send(me, P.REQUEST, request)                 # before HELLO: not accepted
        send(stranger, P.REQUEST, request)           # no address at all
        pump(lambda: router.counters["malformed"] == 2)
        dealer.send_multipart(P.encode(P.HELLO, {"dgram": f"{folder}/reply-t.dgram"}))
        pump(lambda: router.dgram_facades)
        assert dealer.poll(5000)
        command, header, _ = P.decode(dealer.recv_multipart(), P.TO_FACADE_COMMANDS)
        assert command == P.POOLS and header["dgram"] == f"{folder}/frontend.dgram"
        me.sendto(b"\x05\x00", router.dgram.getsockname())                     # garbage
        send(me, P.STREAM_CLOSE, {"stream": "s"})                             # never by datagram
        send(me, P.REQUEST, dict(request, stream="s"))                         # a stream's frame: never either
        pump(lambda: router.counters["malformed"] == 5)
        assert not router.requests
        # a CANCEL that overtook its REQUEST (here on ZeroMQ, the REQUEST by datagram) is applied to it
        dealer.send_multipart(P.encode(P.CANCEL, {"id": "r2"}))
        pump(lambda: "r2" in router.early_cancels)
        send(me, P.REQUEST, dict(request, id="r2"))
        pump(lambda: dealer.poll(0))
        command, header, _ = P.decode(dealer.recv_multipart(), P.TO_FACADE_COMMANDS)
        assert (command, header["id"], header["code"]) == (P.ERROR, "r2", "CANCELLED")
        # and a request by datagram is queued (no worker yet) like one by ZeroMQ
        send(me, P.REQUEST, dict(request, id="r3"))
        pump(lambda: "r3" in router.requests)
    finally:
        me.close()
        stranger.close()
        rig.close()


def test_a_worker_applies_a_cancel_that_came_before_its_request():
    args = worker_arg_parser("test").parse_args(["--connect", "ipc:///nonexistent/backend.sock", "--worker-id", "t"])
    w = Worker(args)
    w._handlers = {ECHO: lambda ctx: b""}
    w._dispatch(None, P.CANCEL, {"id": "r1"}, [])
    job = w._dispatch(None, P.REQUEST, {"id": "r1", "method": ECHO}, [b""], take=True)
    assert job is not None and job[0].cancelled.is_set()
    job = w._dispatch(None, P.REQUEST, {"id": "r2", "method": ECHO}, [b""], take=True)
    assert not job[0].cancelled.is_set()
    assert "r1" not in w._early_cancels   # forgotten once applied


def test_the_broker_takes_done_by_datagram_only_from_the_worker_that_holds_the_request():
    """A local worker sends DONE (after a direct reply) from its bound w-<id>.dgram: the broker frees the
    credit of that worker's request; a DONE from another address, or any other command from the worker's
    address, is counted malformed and changes nothing; a dead worker's address is forgotten."""
    rig = RouterRig()
    router, folder = rig.router, rig.folder
    wpath = f"{folder}/w-fake-cpu-0.1.dgram"
    mine = P.bind_datagram(wpath)
    other = P.bind_datagram(f"{folder}/w-fake-cpu-0.2.dgram")   # a worker id the broker does not know
    facade = rig.dealer(b"facade-t")
    pump = rig.pump

    def send(sock, command, header):
        assert P.send_datagram(sock, f"{folder}/frontend.dgram", P.encode(command, header))

    try:
        ws, _ = rig.worker("fake-cpu-0.1", dgram=wpath)
        assert router.dgram_workers == {wpath: ws.worker_id.encode()}
        facade.send_multipart(P.encode(P.REQUEST, {"id": "r1", "method": ECHO, "pool": "fake"}, [b""]))
        pump(lambda: "r1" in ws.inflight)
        assert mine.recv(P.DATAGRAM_MAX)   # the REQUEST reached the worker's socket as a datagram
        send(other, P.DONE, {"id": "r1"})            # not the worker that holds it
        send(mine, P.FINAL, {"id": "r1"})            # only DONE comes this way
        mine.sendto(b"\x05\x00", f"{folder}/frontend.dgram")   # garbage
        pump(lambda: router.counters["malformed"] == 3)
        assert "r1" in ws.inflight and ws.free() == 0
        send(mine, P.DONE, {"id": "r1"})
        pump(lambda: not ws.inflight)
        assert "r1" not in router.requests and ws.free() == 1 and ws.served == 1
        assert not facade.poll(50)   # DONE forwards nothing: the worker answered the facade itself
        router.worker_exited(ws, "gone", "gone")
        assert not router.dgram_workers
    finally:
        mine.close()
        other.close()
        rig.close()
