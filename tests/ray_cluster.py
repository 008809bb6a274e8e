"""A real Ray cluster on this machine for the tests (ray.cluster_utils.Cluster): a head and worker nodes,
each with its own resources, and the checks that nothing of it is left afterwards."""
from __future__ import annotations

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


def ray_processes() -> list:
    """Processes of any Ray cluster on this machine (raylets, GCS, Ray workers and actors)."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if any(k in cmd for k in ("raylet", "gcs_server", "ray::", "default_worker.py", "WorkerHost")):
            out.append((p.pid, cmd[:160]))
    return out


def gone(pids: list, timeout: float = 20.0) -> list:
    """The pids of `pids` still alive after `timeout`."""
    end = time.time() + timeout
    alive = list(pids)
    while alive and time.time() < end:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    return alive
