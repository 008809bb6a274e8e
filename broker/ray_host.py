"""The Ray actor that hosts one worker process on the node Ray placed it on (the remote side of
broker/ray_children.py).

It starts the ordinary worker command line (`python -m common.child SIGKILL workers.<family> ...`, the same
bootstrap as a local worker: the parent-death signal ties the worker to this actor, so a killed actor or a
lost node takes its worker with it) from the project folder of that node, and `run` returns the worker's
exit code when it ends. The worker joins the broker over tcp with CurveZMQ; it reads frames inline (no
shared memory across machines). Standard library only: this module is shipped to the cluster by value
(broker/ray_children.py), so a node needs the project and its .venv at the path given, nothing more.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Optional


def _node() -> tuple:
    """(Ray node id, node IP) of this actor; Ray is importable in every actor process."""
    try:
        import ray
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
    except Exception:   # not inside Ray (unit tests)
        return socket.gethostname(), "127.0.0.1"


def _with_own_cache(argv: list, cache_dir: str) -> list:
    """The worker's run-scoped cache lives on this node: the driver's run folder is on another machine."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--options-json":
            options = json.loads(out[i + 1])
            options["cache_dir"] = cache_dir
            out[i + 1] = json.dumps(options)
    return out


class WorkerHost:
    def __init__(self):
        self.node_id, self.node_ip = _node()
        self.proc: Optional[subprocess.Popen] = None

    def where(self) -> dict:
        return {"node_id": self.node_id, "node_ip": self.node_ip, "hostname": socket.gethostname(),
                "actor_pid": os.getpid()}

    def run(self, argv: list, env: dict, cwd: str) -> int:
        """Run the worker until it exits; its exit code (negative: killed by that signal). Its cache folder
        (files fetched from the model file service) is removed afterwards."""
        if not os.path.isdir(cwd):
            raise RuntimeError(f"the project folder {cwd} does not exist on node {socket.gethostname()} "
                               f"({self.node_ip}): install PythonML there at the same path, or give --ray-project-dir")
        if not os.path.exists(argv[0]):
            raise RuntimeError(f"{argv[0]} does not exist on node {socket.gethostname()} ({self.node_ip}): run "
                               f"scripts/setup.sh --ray in {cwd} there, or give --ray-python")
        full = dict(os.environ)
        full.update(env)
        full["PML_PARENT_PID"] = str(os.getpid())
        full["PML_NODE"] = self.node_id or socket.gethostname()
        full["PML_NODE_IP"] = self.node_ip
        cache_dir = tempfile.mkdtemp(prefix="pythonml-worker-")
        try:
            # stdout joins stderr: Ray forwards the actor's stderr to the service's, whose stdout carries only READY
            self.proc = subprocess.Popen(_with_own_cache(argv, cache_dir), cwd=cwd, env=full, stdin=subprocess.DEVNULL,
                                         stdout=2, close_fds=True)
            try:
                return self.proc.wait()
            finally:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGKILL)
                    self.proc.wait()
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
