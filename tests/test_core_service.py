"""Service core with fake workers: routing, pinning, flow control, deadlines, cancel, crashes, hangs.

Every test drives the real process tree (run.py -> facade -> broker -> fake workers).
"""
from __future__ import annotations

import functools
import hashlib
import os
import signal
import threading
import time

import grpc
import pytest

from common import wire as P
from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.broker_peer import Peer, run_dir_of
from tests.service import start_service, stats, wait_for

pytestmark = pytest.mark.integration

HEARTBEAT_TIMEOUT_S = 2.0


def echo(stub, timeout=10.0, **fields):
    return list(stub.Echo(X.EchoRequest(**fields), timeout=timeout))


wait_for = functools.partial(wait_for, timeout=15.0)


@pytest.fixture(scope="module")
def svc():
    s = start_service(["--pools", "fake*2,fakeb", "--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S), "--queue-limit", "4"],
                      env={"PML_FAKE_CAPACITY": "2"})
    yield s
    assert s.stop() == 0


@pytest.fixture()
def stub(svc):
    return XG.DiagnosticsStub(svc.channel())


def test_echo_round_trip_and_unknown_pool(svc, stub):
    (reply,) = echo(stub, pool="fake", payload=b"abc")
    assert reply.payload == b"abc" and reply.pid > 0
    with pytest.raises(grpc.RpcError) as e:
        echo(stub, pool="nosuch")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "nosuch" in e.value.details()


def test_model_affinity_routes_to_the_worker_holding_the_model(svc, stub):
    mm = MLG.ModelManagementServiceStub(svc.channel())
    r = mm.LoadModel(ML.LoadModelRequest(model_id="affine-1", options={"pool": "fake"}), timeout=10)
    assert r.success
    loaded = mm.GetLoadedModels(ML.EmptyRequest(), timeout=5)
    assert "affine-1" in [m.model_id for m in loaded.models]
    owners = {echo(stub, pool="fake", model="affine-1")[0].worker_id for _ in range(12)}
    assert len(owners) == 1
    # without a model, both workers get work when they are busy
    results = []
    threads = [threading.Thread(target=lambda: results.append(echo(stub, pool="fake", action="sleep", sleep_ms=300)[0].worker_id))
               for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(results)) == 2
    assert mm.UnloadModel(ML.UnloadModelRequest(model_id="affine-1"), timeout=10).success
    with pytest.raises(grpc.RpcError) as e:
        mm.UnloadModel(ML.UnloadModelRequest(model_id="affine-1"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_is_pinned_to_one_worker(svc):
    peer = Peer(f"ipc://{run_dir_of(svc.proc.pid)}/frontend.sock")
    try:
        owners = set()
        for i in range(10):
            rid = peer.echo(stream="s-1", payload=str(i).encode())
            cmd, hdr, frames = peer.recv_terminal(rid)
            assert cmd == P.FINAL
            owners.add(X.EchoReply.FromString(frames[0]).worker_id)
            # keep the other worker busy half the time so least-loaded routing would move us
            if i % 2 == 0:
                peer.echo(action="sleep", sleep_ms=50)
        assert len(owners) == 1
        peer.send_raw(P.encode(P.STREAM_CLOSE, {"stream": "s-1"}))
    finally:
        peer.close()


def test_queue_overflow_answers_resource_exhausted_at_once(svc, stub):
    # 2 workers x capacity 2 = 4 running, queue limit 4 -> the 9th is refused immediately
    wait_for(lambda: not any(w.inflight for w in stats(svc.channel()).workers))
    errors, lock = [], threading.Lock()

    def call():
        try:
            echo(stub, pool="fake", action="sleep", sleep_ms=1500)
        except grpc.RpcError as exc:
            with lock:
                errors.append((exc.code(), time.time()))
    threads = [threading.Thread(target=call) for _ in range(8)]
    [t.start() for t in threads]
    wait_for(lambda: [p.queue_depth for p in stats(svc.channel()).pools if p.pool == "fake"][0] == 4)
    t0 = time.time()
    with pytest.raises(grpc.RpcError) as e:
        echo(stub, pool="fake", payload=b"x")
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queued" in e.value.details()
    assert time.time() - t0 < 1.4   # refused at once, not after a queued 1.5 s request made room
    [t.join() for t in threads]
    assert errors == []


def test_deadline_expires_in_queue_without_reaching_a_worker(svc, stub):
    before = stats(svc.channel())
    served_before = sum(w.requests_served for w in before.workers if w.pool == "fakeb")
    blocker = threading.Thread(target=lambda: echo(stub, pool="fakeb", action="sleep", sleep_ms=1200))
    blocker2 = threading.Thread(target=lambda: echo(stub, pool="fakeb", action="sleep", sleep_ms=1200))
    blocker.start(), blocker2.start()
    wait_for(lambda: sum(w.inflight for w in stats(svc.channel()).workers if w.pool == "fakeb") == 2)
    with pytest.raises(grpc.RpcError) as e:
        echo(stub, pool="fakeb", payload=b"late", timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    blocker.join(), blocker2.join()
    after = stats(svc.channel())
    served_after = sum(w.requests_served for w in after.workers if w.pool == "fakeb")
    assert served_after - served_before == 2  # only the two blockers reached the worker


def test_deadline_passing_in_queue_is_answered_by_the_broker(svc):
    wait_for(lambda: not any(w.inflight for w in stats(svc.channel()).workers))
    peer = Peer(f"ipc://{run_dir_of(svc.proc.pid)}/frontend.sock")
    try:
        blockers = [peer.echo(pool="fakeb", action="sleep", sleep_ms=800) for _ in range(2)]
        rid = peer.echo(pool="fakeb", payload=b"late", deadline=time.time() + 0.2)
        t0 = time.time()
        cmd, hdr, _ = peer.recv_terminal(rid)
        assert cmd == P.ERROR and hdr["code"] == "DEADLINE_EXCEEDED", hdr
        assert "queue" in hdr["message"]
        assert time.time() - t0 < 0.75   # answered in the queue, before the 0.8 s blockers let it reach a worker
        for b in blockers:
            assert peer.recv_terminal(b)[0] == P.FINAL
    finally:
        peer.close()
    assert [p.expired for p in stats(svc.channel()).pools if p.pool == "fakeb"][0] >= 1


def test_cancel_reaches_the_worker(svc, stub):
    call = stub.Echo(X.EchoRequest(pool="fakeb", action="sleep", sleep_ms=8000), timeout=30)
    wait_for(lambda: any(w.inflight for w in stats(svc.channel()).workers if w.pool == "fakeb"))
    t0 = time.time()
    call.cancel()
    wait_for(lambda: not any(w.inflight for w in stats(svc.channel()).workers if w.pool == "fakeb"), timeout=6)
    assert time.time() - t0 < 6.0   # the worker stopped: it did not sleep out its 8 s


def test_shm_frames_arrive_bit_exact_and_slots_are_released(svc, stub):
    total = stats(svc.channel()).shm_slots_total
    assert total > 0
    for size in (1, 1000, 1920 * 1080 * 3):
        data = os.urandom(size)
        (reply,) = echo(stub, pool="fake", action="shm_echo", payload=data)
        assert reply.sha256 == hashlib.sha256(data).hexdigest()
    # a worker crash while holding a slot still returns it
    with pytest.raises(grpc.RpcError) as e:
        echo(stub, pool="fakeb", action="crash", payload=os.urandom(1000))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_for(lambda: stats(svc.channel()).shm_slots_free == total)


def ready_pid(svc, pool):
    def find():
        ws = [w for w in stats(svc.channel()).workers if w.pool == pool and w.state == "ready"]
        return ws[0].pid if ws and ws[0].pid > 0 else None
    return wait_for(find, timeout=30)


def test_kill_9_mid_request_fails_unavailable_and_worker_comes_back(svc, stub):
    ready_pid(svc, "fakeb")
    st = stats(svc.channel())
    restarts = {w.worker_id.split(".")[0]: w.restarts for w in st.workers}
    pid = [w.pid for w in st.workers if w.pool == "fakeb"][0]
    assert pid > 0
    t = threading.Thread(target=lambda: time.sleep(0.3) or os.kill(pid, signal.SIGKILL))
    t.start()
    t0 = time.time()
    with pytest.raises(grpc.RpcError) as e:
        echo(stub, pool="fakeb", action="sleep", sleep_ms=5000)
    t.join()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "crashed" in e.value.details() and "retry" in e.value.details()
    assert time.time() - t0 < 4.0   # failed when the worker died, not after its 5 s request
    (reply,) = echo(stub, pool="fakeb", payload=b"again", timeout=20)
    assert reply.payload == b"again" and reply.pid != pid
    st = stats(svc.channel())
    assert [w.restarts for w in st.workers if w.pool == "fakeb"][0] == restarts["fakeb@cpu#0"] + 1


def test_sigstop_worker_is_replaced_after_heartbeat_timeout(svc, stub):
    # the previous test restarted fakeb: wait for its new worker, and learn its pid from a reply it sent
    ready_pid(svc, "fakeb")
    before = stats(svc.channel())
    restarts = [w.restarts for w in before.workers if w.pool == "fakeb"][0]
    t_seen = time.time()
    (probe,) = echo(stub, pool="fakeb", payload=b"probe", timeout=20)
    # the broker received that reply after t_seen: it cannot declare the worker silent before t_seen + timeout
    with pytest.raises(grpc.RpcError) as e:
        echo(stub, pool="fakeb", action="hang", timeout=20 * HEARTBEAT_TIMEOUT_S)
    took = time.time() - t_seen
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
    # the request reached the worker that stopped itself, and the broker killed that one
    assert f"pid {probe.pid})" in e.value.details() and "SIGKILL" in e.value.details(), e.value.details()
    assert "retry" in e.value.details()
    # found by the heartbeat check (the progress watchdog needs minutes here), not by anything faster
    assert stats(svc.channel()).worker_hangs == before.worker_hangs + 1
    assert took >= HEARTBEAT_TIMEOUT_S - 0.1, f"answered after {took:.2f}s, before the heartbeat timeout"
    assert took < 10 * HEARTBEAT_TIMEOUT_S, f"hang noticed only after {took:.1f}s"
    (reply,) = echo(stub, pool="fakeb", payload=b"alive", timeout=20)
    assert reply.payload == b"alive" and reply.pid != probe.pid
    assert [w.restarts for w in stats(svc.channel()).workers if w.pool == "fakeb"][0] == restarts + 1


def test_stream_on_one_pool_keeps_flowing_while_another_pool_crashes(svc, stub):
    gaps = []

    def crash_b():
        time.sleep(0.3)
        try:
            echo(stub, pool="fakeb", action="crash")
        except grpc.RpcError:
            pass
    t = threading.Thread(target=crash_b)
    t.start()
    last = time.time()
    parts = 0
    for reply in stub.Echo(X.EchoRequest(pool="fake", action="stream", parts=60, sleep_ms=20), timeout=30):
        now = time.time()
        gaps.append(now - last)
        last = now
        parts += 1
    t.join()
    assert parts == 60
    assert max(gaps[1:]) < 0.25, f"largest gap {max(gaps[1:]):.3f}s"


def test_garbage_on_broker_sockets_is_survived(svc, stub):
    run_dir = run_dir_of(svc.proc.pid)
    before = stats(svc.channel()).malformed_frames
    for endpoint in ("frontend.sock", "backend.sock"):
        peer = Peer(f"ipc://{run_dir}/{endpoint}")
        peer.send_raw([b"garbage"])
        peer.send_raw([P.MAGIC, b"NOPE", b"\x00"])
        peer.send_raw([P.MAGIC, P.REQUEST, b"\xc1\xc1not msgpack"])
        peer.send_raw([P.MAGIC, P.READY, P.pack_header({"pool": "evil"})])
        peer.send_raw([P.MAGIC, P.REQUEST, P.pack_header([1, 2, 3])])
        peer.send_raw([P.MAGIC, P.REQUEST, P.pack_header({"id": 5})])
        time.sleep(0.2)
        peer.close()
    wait_for(lambda: stats(svc.channel()).malformed_frames >= before + 8)
    (reply,) = echo(stub, pool="fake", payload=b"still here")
    assert reply.payload == b"still here"


def test_stats_report_memory_per_worker(svc):
    st = stats(svc.channel())
    assert {w.pool for w in st.workers} == {"fake", "fakeb"}
    for w in st.workers:
        if w.state == "ready":
            assert w.rss_mb > 5 and w.uss_mb > 1 and w.pss_mb > 1 and w.pid > 0 and w.uptime_s > 0


def test_replay_of_acknowledged_loads_after_crash(svc, stub):
    mm = MLG.ModelManagementServiceStub(svc.channel())
    assert mm.LoadModel(ML.LoadModelRequest(model_id="replay-me", options={"pool": "fakeb"}), timeout=10).success
    with pytest.raises(grpc.RpcError):
        echo(stub, pool="fakeb", action="crash")

    def reloaded():
        st = stats(svc.channel())
        w = [w for w in st.workers if w.pool == "fakeb"][0]
        return w.state == "ready" and "replay-me" in [m.model_id for m in w.models]
    wait_for(reloaded, timeout=20)
    assert mm.UnloadModel(ML.UnloadModelRequest(model_id="replay-me"), timeout=10).success


def test_partials_from_a_helper_thread_never_overtake_the_final_reply(svc, stub):
    for _ in range(20):
        parts = [r.part for r in echo(stub, pool="fake", action="stream_thread", parts=50)]
        assert parts == list(range(50))
