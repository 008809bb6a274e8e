"""A real Ray cluster on this machine for the tests (ray.cluster_utils.Cluster): a head and worker nodes,
each with its own resources, and the checks that nothing of it is left afterwards."""
from __future__ import annotations

import shutil
import time

import psutil
import pytest

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
    left = gone([pid for pid, _ in before + processes_of(address)], timeout=30)
    assert not left, f"processes of the Ray cluster left after its shutdown: {left}"
    shutil.rmtree(session, ignore_errors=True)   # its logs and sockets under /tmp/ray


def gone(pids: list, timeout: float = 20.0) -> list:
    """The pids of `pids` still alive after `timeout`."""
    end = time.time() + timeout
    alive = list(pids)
    while alive and time.time() < end:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    return alive
