"""A network partition between the broker and a Ray worker host (issue 18): the host is a network namespace
made by the test (tests/netns_host.py) with a Ray node inside, joined to a cluster started on this machine.
Cutting its link loses packets without resetting any connection, as a real partition does: the worker's
requests end UNAVAILABLE once its heartbeats are missed, the pool comes back on a surviving node with its
loads replayed, other pools never notice; when the link comes back, the old worker is fenced (told to
stop) and nothing of it is left."""
from __future__ import annotations

import time

import grpc
import psutil
import pytest

from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.netns_host import NetnsHost, netns_available
from tests.ray_cluster import OBJECT_STORE, OtherPool, needs_ray, shutdown, start_cluster
from tests.service import start_service, stats, wait_for, wait_gone

pytestmark = [needs_ray, pytest.mark.slow,
              pytest.mark.skipif(not netns_available(), reason="needs root and network namespaces (ip netns)")]

HEARTBEAT_TIMEOUT_S = 3.0


def echo(channel, timeout=30.0, **fields):
    return list(XG.DiagnosticsStub(channel).Echo(X.EchoRequest(**fields), timeout=timeout))


def fake_workers(channel) -> list:
    return [w for w in stats(channel).workers if w.pool == "fake"]


def test_partitioned_worker_host_fails_fast_recovers_and_is_fenced():
    cluster = start_cluster([])
    host = NetnsHost("b").create()
    try:
        host.start_ray_node(cluster.address, {"zone": 1, "host_b": 1})
        with start_service(["--pools", "litert,fake[ray;num_cpus=1;resources=zone:1]", "--ray-address",
                            cluster.address, "--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S)],
                           env={"PML_FAULT_INJECTION": "1"}) as svc:
            ch = svc.channel()
            first = wait_for(lambda: next((w for w in fake_workers(ch) if w.state == "ready"), None), 120,
                             message="the fake pool never became ready on the namespace's Ray node")
            assert first.placement == "ray" and first.node_ip == host.ip, "the only node with zone is behind the veth"
            # a survivor joins: the pool's next worker can only go there
            cluster.add_node(num_cpus=1, resources={"zone": 1, "host_c": 1}, object_store_memory=OBJECT_STORE)
            MLG.ModelManagementServiceStub(ch).LoadModel(
                ML.LoadModelRequest(model_id="fake-model-p", pipeline_type="fake", options={"pool": "fake"}), timeout=30)
            (litert_before,) = echo(ch, pool="litert")

            other = OtherPool(echo, ch, "litert").start()   # other pools keep answering the whole time

            call = XG.DiagnosticsStub(ch).Echo(X.EchoRequest(pool="fake", action="stream", parts=10000, sleep_ms=50),
                                               timeout=120)
            assert next(call).worker_id == first.worker_id
            t0 = time.time()
            host.partition()
            with pytest.raises(grpc.RpcError) as err:
                for _ in call:
                    pass
            ended_after = time.time() - t0
            details = err.value.details()
            print(f"partition -> UNAVAILABLE after {ended_after:.2f}s: {details}")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, details
            assert "no heartbeat" in details and "unreachable" in details and "retry" in details, details
            assert ended_after < HEARTBEAT_TIMEOUT_S + 15, f"the stream ended {ended_after:.1f}s after the partition"

            back = wait_for(lambda: next((w for w in fake_workers(ch) if w.state == "ready"
                                          and w.worker_id != first.worker_id), None), 120,
                            message="the fake pool did not come back on the surviving node")
            assert back.node_ip != host.ip and back.node != first.node
            wait_for(lambda: any(m.model_id == "fake-model-p" for w in fake_workers(ch) if w.state == "ready"
                                 for m in w.models), 30, message="the load was not replayed on the new worker")
            (r,) = echo(ch, pool="fake")
            assert r.worker_id == back.worker_id

            # the link comes back: the old worker (alive all along behind it) is fenced and ends
            host.heal()
            t_heal = time.time()
            assert not wait_gone([first.pid], timeout=90), "the partitioned worker still runs after the link came back"
            print(f"old worker gone {time.time() - t_heal:.2f}s after the link came back")
            fenced = "told to stop" in svc.log() or "fenced" in svc.log()
            print("fenced by the broker" if fenced else "ended by Ray")
            (r,) = echo(ch, pool="fake")
            assert r.worker_id == back.worker_id, "requests still go to the successor only"
            other.finish()
            assert not other.errors, f"the litert pool noticed: {other.errors}"
            assert other.pids == {litert_before.pid}, "the litert worker was never restarted"
            last = [w.pid for w in fake_workers(ch)]
        assert not wait_gone(last, 20), "a Ray-placed worker outlived the service"
    finally:
        host.destroy()
        shutdown(cluster)
    assert not [p for p in psutil.process_iter(["cmdline"])
                if host.ns in " ".join(p.info["cmdline"] or [])], "a process of the namespace host is left"
