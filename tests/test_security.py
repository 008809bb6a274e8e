"""Security: loopback bind, shared token, private socket folder, size limits, CurveZMQ for tcp workers,
and worker recycling (max RSS, max requests) that loses no request."""
from __future__ import annotations

import os
import socket
import threading
import time

import grpc
import pytest
import zmq
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import wire as P
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.broker_peer import run_dir_of
from tests.service import free_port, start_service, stats

pytestmark = pytest.mark.integration


def echo(channel, metadata=None, timeout=20, **fields):
    return list(XG.DiagnosticsStub(channel).Echo(X.EchoRequest(**fields), timeout=timeout, metadata=metadata))


def test_binds_loopback_by_default_and_socket_folder_is_private():
    with start_service(["--pools", "fake"]) as svc:
        # nothing listens on the machine's other addresses
        with socket.socket() as s:
            s.settimeout(1)
            other = socket.gethostbyname(socket.gethostname())
            if not other.startswith("127."):
                assert s.connect_ex((other, svc.port)) != 0
        run_dir = run_dir_of(svc.proc.pid)
        assert os.stat(run_dir).st_mode & 0o777 == 0o700
        assert {"backend.sock", "frontend.sock"} <= set(os.listdir(run_dir))


def test_token_required_when_set_health_stays_open():
    with start_service(["--pools", "fake"], env={"PYTHONML_TOKEN": "s3cret-token"}) as svc:
        ch = svc.channel()
        for md in (None, [("authorization", "Bearer wrong")], [("x-api-key", "nope")]):
            with pytest.raises(grpc.RpcError) as e:
                echo(ch, metadata=md, pool="fake")
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                stats(ch, metadata=md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        (r,) = echo(ch, metadata=[("authorization", "Bearer s3cret-token")], pool="fake", payload=b"ok")
        assert r.payload == b"ok"
        (r,) = echo(ch, metadata=[("x-api-key", "s3cret-token")], pool="fake", payload=b"ok")
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert st.status == health_pb2.HealthCheckResponse.SERVING


def test_message_size_limits_are_enforced():
    with start_service(["--pools", "fake", "--max-message-mb", "4"]) as svc:
        with pytest.raises(grpc.RpcError) as e:
            echo(svc.channel(), pool="fake", payload=b"x" * (5 * 2**20))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a header bigger than the protocol allows is refused by the decoder, not trusted
        with pytest.raises(P.ProtocolError):
            P.unpack_header(b"\xc6" + (P.MAX_HEADER_BYTES + 1).to_bytes(4, "big") + b"\0" * (P.MAX_HEADER_BYTES + 1))
        (r,) = echo(svc.channel(), pool="fake", payload=b"fine")
        assert r.payload == b"fine"


def test_tcp_worker_socket_requires_curve_keys():
    port = free_port()
    with start_service(["--pools", "fake", "--worker-endpoint", f"tcp://127.0.0.1:{port}"]) as svc:
        (r,) = echo(svc.channel(), pool="fake", payload=b"curve ok")  # our own workers hold the keys
        assert r.payload == b"curve ok"
        before = stats(svc.channel()).malformed_frames
        ctx = zmq.Context.instance()
        rogue = ctx.socket(zmq.DEALER)           # no keys at all
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.setsockopt(zmq.IDENTITY, b"fake@cpu#0.1")
        rogue.connect(f"tcp://127.0.0.1:{port}")
        rogue2 = ctx.socket(zmq.DEALER)          # keys the broker does not know
        pub, sec = zmq.curve_keypair()
        spub, _ = zmq.curve_keypair()
        rogue2.curve_publickey, rogue2.curve_secretkey, rogue2.curve_serverkey = pub, sec, spub
        rogue2.setsockopt(zmq.LINGER, 0)
        rogue2.connect(f"tcp://127.0.0.1:{port}")
        for s in (rogue, rogue2):
            for msg in (P.encode(P.READY, {"pool": "fake", "capacity": 100}), [b"garbage"]):
                try:  # the handshake fails, so the send may be refused: either way nothing may arrive
                    if s.poll(100, zmq.POLLOUT):
                        s.send_multipart(msg, flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        time.sleep(1.0)
        rogue.close(0)
        rogue2.close(0)
        assert stats(svc.channel()).malformed_frames == before  # nothing of theirs reached the broker
        (r,) = echo(svc.channel(), pool="fake", payload=b"still ok")
        assert r.payload == b"still ok"


def test_recycle_on_max_requests_loses_no_request():
    with start_service(["--pools", "fake", "--max-worker-requests", "20"]) as svc:
        ch = svc.channel()
        pids, errors = set(), []

        def client(n):
            for i in range(n):
                try:
                    (r,) = echo(ch, pool="fake", action="sleep", sleep_ms=5, payload=b"%d" % i, timeout=60)
                    assert r.payload == b"%d" % i
                    pids.add(r.pid)
                except grpc.RpcError as exc:
                    errors.append(exc)
        ts = [threading.Thread(target=client, args=(25,)) for _ in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert errors == []
        assert len(pids) >= 4  # 100 requests with a 20-request cap: several generations of the worker
        w = stats(ch).workers[0]
        assert w.restarts >= 4


def test_recycle_on_max_rss_between_requests():
    with start_service(["--pools", "fake", "--max-worker-rss-mb", "150"]) as svc:
        ch = svc.channel()
        (first,) = echo(ch, pool="fake", action="grow", grow_mb=200)
        end = time.time() + 20
        while time.time() < end:
            (r,) = echo(ch, pool="fake", payload=b"after", timeout=60)
            if r.pid != first.pid:
                break
            time.sleep(0.2)
        assert r.pid != first.pid and r.payload == b"after"
        w = stats(ch).workers[0]
        assert w.rss_mb < 150 or w.pid != first.pid


def test_prometheus_endpoint_has_per_worker_and_per_model_figures():
    import urllib.request
    from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
    mport = free_port()
    with start_service(["--pools", "fake*2", "--metrics-port", str(mport)]) as svc:
        MLG.ModelManagementServiceStub(svc.channel()).LoadModel(
            ML.LoadModelRequest(model_id="metric-model", options={"pool": "fake"}), timeout=10)
        end = time.time() + 10
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
            if 'model="metric-model"' in text or time.time() > end:
                break
            time.sleep(0.2)
        assert text.count("pythonml_worker_rss_megabytes{") == 2
        assert 'worker="fake@cpu#0.1"' in text and 'worker="fake@cpu#1.1"' in text
        assert 'pythonml_model_ram_megabytes{' in text and 'model="metric-model"' in text
        assert "pythonml_pool_queue_depth{" in text


def test_worker_accepts_a_curve_key_that_begins_with_a_dash():
    # Z85 keys are random and may begin with "-"; run.py passes them in the "--opt=value" form
    from workers.base import worker_arg_parser
    args = worker_arg_parser("fake").parse_args(["--connect", "tcp://127.0.0.1:1", "--worker-id", "w",
                                                 "--curve-server-key=-abcdefghij"])
    assert args.curve_server_key == "-abcdefghij"
    src = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "broker", "launch.py")).read()
    assert 'f"--curve-server-key={' in src   # where the worker command line is written
