"""Pools placed on a real Ray cluster (issue 18): started by the test on this machine with
ray.cluster_utils.Cluster, nodes with their own resources. The service asks Ray to place a `[ray]` pool's
workers as actors (broker/ray_children.py); each runs the ordinary worker and joins the broker over tcp
with CurveZMQ. Checked: placement by resources, Stats showing each worker's node, frames from shared
memory copied inline for a remote worker (local workers preferred), a node removed mid-stream (its
requests end UNAVAILABLE at once, the pool comes back on a surviving node with its loads replayed, other
pools never notice), and no actor or worker left once the service stops."""
from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import urllib.request

import grpc
import pytest

from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.ray_cluster import OtherPool, needs_ray, shutdown, start_cluster
from tests.service import free_port, start_service, stats, wait_for, wait_gone

pytestmark = [needs_ray, pytest.mark.slow]


def echo(channel, timeout=30.0, **fields):
    return list(XG.DiagnosticsStub(channel).Echo(X.EchoRequest(**fields), timeout=timeout))


def workers(channel, pool: str) -> list:
    return [w for w in stats(channel).workers if w.pool == pool]


def ready_on_ray(channel, pool: str):
    """The pool's one worker, once it is ready on a Ray node."""
    def check():
        ws = [w for w in workers(channel, pool) if w.state == "ready" and w.placement == "ray"]
        return ws[0] if ws else None
    return wait_for(check, 120, message=f"no ready Ray-placed {pool} worker")


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster([{"num_cpus": 1, "resources": {"zone": 1, "host_b": 1}},
                       {"num_cpus": 1, "resources": {"zone": 1, "host_c": 1}}])
    yield c
    shutdown(c)


def node_ids(cluster) -> dict:
    """{'host_b': node id, 'host_c': node id}."""
    out = {}
    for node in cluster.worker_nodes:
        for name in ("host_b", "host_c"):
            if name in (node.get_resource_and_label_spec().resources or {}):
                out[name] = node.node_id
    return out


def test_placement_by_resources_stats_and_inline_frames(cluster):
    ids = node_ids(cluster)
    # capacity 1 per worker; the Ray-placed worker is first in the pool (ties in load go to it)
    mport = free_port()
    with start_service(["--pools", "fake[ray;num_cpus=1;resources=host_c:1],fake", "--ray-address", cluster.address,
                        "--metrics-port", str(mport)],
                       env={"PML_FAULT_INJECTION": "1", "PML_FAKE_CAPACITY": "1"}) as svc:
        ch = svc.channel()
        remote = ready_on_ray(ch, "fake")
        local = wait_for(lambda: [w for w in workers(ch, "fake") if w.placement == "local" and w.state == "ready"], 60)[0]
        assert remote.node == ids["host_c"], "the pool's worker is on the node with host_c"
        assert remote.node_ip and remote.pid > 0 and remote.pid != local.pid
        assert local.node and local.node != remote.node
        metrics = wait_for(lambda: (lambda t: t if remote.node in t else None)(
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()), 10)
        assert (f'pythonml_worker_info{{device="cpu",node="{remote.node}",node_ip="{remote.node_ip}",placement="ray",'
                f'pool="fake",worker="{remote.worker_id}"}} 1.0') in metrics

        (r,) = echo(ch, pool="fake")
        assert r.worker_id == remote.worker_id, "a request without a frame: the tie goes to the first worker"
        frame = os.urandom(300_000)   # travels through shared memory
        digest = hashlib.sha256(frame).hexdigest()
        (r,) = echo(ch, pool="fake", action="shm_echo", payload=frame)
        assert r.worker_id == local.worker_id and r.sha256 == digest, "a frame in shared memory prefers the local worker"

        # the remote worker sleeps 1 s, the local one 6 s; once the remote one is free again, a frame goes to it
        # (the local one is busy), copied inline
        short = threading.Thread(target=echo, args=(ch,), kwargs=dict(pool="fake", action="sleep", sleep_ms=1000))
        short.start()
        wait_for(lambda: [w for w in workers(ch, "fake") if w.placement == "ray"][0].inflight == 1, 20)
        long = threading.Thread(target=echo, args=(ch,), kwargs=dict(pool="fake", action="sleep", sleep_ms=6000))
        long.start()
        wait_for(lambda: [w for w in workers(ch, "fake") if w.placement == "local"][0].inflight == 1, 20)
        short.join()
        (r,) = echo(ch, pool="fake", action="shm_echo", payload=frame)
        assert r.worker_id == remote.worker_id and r.pid == remote.pid
        assert r.sha256 == digest, "the remote worker read the same bytes, inline"
        long.join()
        assert len(actors_alive(cluster)) == 1, "one WorkerHost actor per Ray-placed worker"
    assert not actors_alive(cluster), "the service stopped: its actor is gone"


def test_node_lost_mid_stream_replaced_on_a_survivor(cluster):
    with start_service(["--pools", "litert,fake[ray;num_cpus=1;resources=zone:1]", "--ray-address", cluster.address,
                        "--heartbeat-timeout-s", "60"], env={"PML_FAULT_INJECTION": "1"}) as svc:
        ch = svc.channel()
        first = ready_on_ray(ch, "fake")
        MLG.ModelManagementServiceStub(ch).LoadModel(ML.LoadModelRequest(model_id="fake-model-a", pipeline_type="fake",
                                                                         options={"pool": "fake"}),
                                                     timeout=30)
        wait_for(lambda: any(m.model_id == "fake-model-a" for w in workers(ch, "fake") for m in w.models), 20)
        (litert_before,) = echo(ch, pool="litert")

        other = OtherPool(echo, ch, "litert").start()   # other pools keep answering the whole time
        call = XG.DiagnosticsStub(ch).Echo(X.EchoRequest(pool="fake", action="stream", parts=1000, sleep_ms=50),
                                           timeout=120)
        got = [next(call) for _ in range(3)]           # the stream is running on the remote worker
        assert all(r.worker_id == first.worker_id for r in got)
        doomed = [n for n in cluster.worker_nodes if n.node_id == first.node][0]
        survivor = [n for n in cluster.worker_nodes if n.node_id != first.node][0]
        t0 = time.time()
        cluster.remove_node(doomed, allow_graceful=False)
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
        lost_after = time.time() - t0
        print(f"node removed -> UNAVAILABLE after {lost_after:.2f}s: {err.value.details()}")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "fake worker" in err.value.details() and "Ray" in err.value.details(), err.value.details()
        # at once: Ray reports the lost actor; not the 60 s heartbeat timeout of this service
        assert lost_after < 20, f"the stream ended {lost_after:.1f}s after its node was removed"

        back = wait_for(lambda: next((w for w in workers(ch, "fake") if w.state == "ready"
                                      and w.node == survivor.node_id), None), 120,
                        message="the fake pool did not come back on the surviving node")
        assert back.restarts >= 1 and back.worker_id != first.worker_id
        wait_for(lambda: any(m.model_id == "fake-model-a" for m in back.models)
                 or any(m.model_id == "fake-model-a" for w in workers(ch, "fake") if w.node == survivor.node_id
                        for m in w.models), 30, message="the load was not replayed on the new worker")
        (r,) = echo(ch, pool="fake")
        assert r.worker_id == back.worker_id
        other.finish()
        assert not other.errors, f"the litert pool noticed: {other.errors}"
        assert other.pids == {litert_before.pid}, "the litert worker was never restarted"
        pids_on_ray = [w.pid for w in workers(ch, "fake")]
    # the service stopped: its actors and their workers are gone, the cluster itself is the test's
    assert not wait_gone(pids_on_ray, 20), "a Ray-placed worker outlived the service"
    assert not actors_alive(cluster), "a WorkerHost actor outlived the service"


def actors_alive(cluster) -> list:
    """WorkerHost actors the cluster's GCS still counts as alive (a fresh driver asks it)."""
    import ray
    from ray._private import state
    ray.init(address=cluster.address, namespace="pythonml-check", log_to_driver=False, configure_logging=False)
    try:
        return [a for a in state.actors().values()
                if a.get("State") == "ALIVE" and "WorkerHost" in str(a.get("ActorClassName", ""))]
    finally:
        ray.shutdown()


def test_sigkill_of_the_service_takes_its_actors_with_it(cluster):
    """The actors belong to the service's driver: when run.py dies without a word, Ray ends its job and
    its actors, and each worker dies with its actor (parent-death signal)."""
    svc = start_service(["--pools", "fake[ray;num_cpus=1;resources=zone:1]", "--ray-address", cluster.address])
    try:
        worker = ready_on_ray(svc.channel(), "fake")
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(10)
        assert not wait_gone([worker.pid], 60), "the Ray-placed worker outlived a SIGKILLed service"
        wait_for(lambda: not actors_alive(cluster), 60, message="its actor outlived a SIGKILLed service")
    finally:
        svc.stop()
