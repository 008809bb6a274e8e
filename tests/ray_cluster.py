"""A real Ray cluster on this machine for the tests (ray.cluster_utils.Cluster): a head and worker nodes,
each with its own resources, and the checks that nothing of it is left afterwards."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

import psutil
import pytest

from broker.ray_host import clean_stale_caches
from tests.service import wait_gone

ray_available = True
try:
    import ray  # noqa: F401
    from ray.cluster_utils import Cluster
except ImportError:  # scripts/setup.sh --ray (and --dev) installs it
    ray_available = False

needs_ray = pytest.mark.skipif(not ray_available, reason="Ray is not installed: scripts/setup.sh --ray")

OBJECT_STORE = 80 * 2**20    # the smallest object store Ray accepts: the nodes hold no objects of ours


def start_cluster(nodes: list) -> "Cluster":
    """A head with one CPU and nothing else, and one node per entry of `nodes` ({"num_cpus": .., "resources": ..})."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": OBJECT_STORE})
    for spec in nodes:
        cluster.add_node(object_store_memory=OBJECT_STORE, **spec)
    cluster.wait_for_nodes()
    return cluster


def processes_of(address: str) -> list:
    """Processes on this machine that belong to the cluster whose GCS is at `address` (their command line names
    it: raylets, the GCS, Ray's workers and our actors)."""
    port = address.rsplit(":", 1)[-1]
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if f":{port}" in cmd and ("ray" in cmd or "gcs" in cmd):
            out.append((p.pid, cmd[:160]))
    return out


def shutdown(cluster) -> None:
    """Stop the cluster and check that none of its processes is left."""
    address = cluster.address
    before = processes_of(address)
    assert before, f"no process of the cluster at {address} was found: the check below would prove nothing"
    session = cluster.head_node.get_session_dir_path()
    cluster.shutdown()
    left = wait_gone([pid for pid, _ in before + processes_of(address)], timeout=30)
    assert not left, f"processes of the Ray cluster left after its shutdown: {left}"
    shutil.rmtree(session, ignore_errors=True)   # its logs and sockets under /tmp/ray
    latest = os.path.join(os.path.dirname(session), "session_latest")
    if os.path.islink(latest) and os.path.realpath(latest) == os.path.realpath(session):
        os.unlink(latest)   # Ray's pointer to the session just removed
    # the cache folders of its actors that were killed (a removed node, a killed service): on a real node the
    # next actor to start removes them; no actor starts on this cluster again
    clean_stale_caches(tempfile.gettempdir())


class OtherPool:
    """Echoes a pool every 50 ms from a thread while a test breaks another one: `errors` are the codes it got,
    `pids` the workers that answered (one pid: its worker was never restarted)."""

    def __init__(self, echo, channel, pool: str):
        self.echo, self.channel, self.pool = echo, channel, pool
        self.stop, self.errors, self.pids = threading.Event(), [], set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import grpc
        while not self.stop.is_set():
            try:
                self.pids.add(self.echo(self.channel, pool=self.pool, timeout=10)[0].pid)
            except grpc.RpcError as exc:
                self.errors.append(exc.code())
            time.sleep(0.05)

    def start(self) -> "OtherPool":
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
