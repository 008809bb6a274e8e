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
    """(Ray node id, node IP) of this actor; Ray is importable in every actor process. Outside Ray (unit
    tests) the host's name: asking Ray's runtime context there would start a local Ray instance."""
    try:
        import ray
        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
    except Exception:
        pass
    return socket.gethostname(), "127.0.0.1"


# an actor's cache folder, in the node's temporary folder: `pythonml-<actor pid>-worker-<random>`, the naming
# of the service's run folders (common/proc.py), so a dead owner is told by its pid
CACHE_PREFIX, CACHE_TAG = "pythonml-", "worker-"


def clean_stale_caches(root: str) -> list:
    """Remove the cache folders, in `root`, of actors that died without cleaning (ray.kill, a lost node or a
    killed service end the actor at once: `run`'s own removal never runs), and return their paths: those
    named after a pid that no longer lives and owned by this user. The twin of common/proc.py's
    clean_stale_run_dirs, kept here because this module ships by value (standard library only)."""
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        pid, _, tag = name[len(CACHE_PREFIX):].partition("-")
        if not name.startswith(CACHE_PREFIX) or not tag.startswith(CACHE_TAG) or not pid.isdigit():
            continue
        path = os.path.join(root, name)
        try:
            os.kill(int(pid), 0)
            continue                  # alive
        except PermissionError:
            continue                  # alive, another user's
        except ProcessLookupError:
            pass
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


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
        (files fetched from the model file service) is removed afterwards, or, when this actor is killed
        first, by the next actor that starts on this node (clean_stale_caches)."""
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
        clean_stale_caches(tempfile.gettempdir())   # those of actors killed before on this node
        cache_dir = tempfile.mkdtemp(prefix=f"{CACHE_PREFIX}{os.getpid()}-{CACHE_TAG}")
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
