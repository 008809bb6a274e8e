"""Workers placed on a Ray cluster, as children of the process manager like any other.

`--ray-address ADDR` connects this process to a Ray cluster as its driver; a pool with `[ray]` in its
`--pools` settings (broker/ray_placement.py) gets its workers as Ray actors (broker/ray_host.py) placed on
nodes whose resources fit. Each actor runs the ordinary worker command line on its node; the worker joins
the broker over tcp with CurveZMQ. To the process manager a Ray child looks like a local one: `pidfd` is
the read end of a pipe that becomes readable when the remote worker ended (its exit code), its actor
died (a lost node: at once, Ray reports it) or we killed it; the manager then fails its requests
UNAVAILABLE, restarts it with back-off (Ray places the new actor on a node that fits, a surviving one
when a node was lost) and replays its loads. Ray never restarts an actor by itself (max_restarts=0):
one owner decides. The actors belong to this driver: they end when it disconnects.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger("ray")

KILL_CONFIRM_S = 2.0     # a killed actor whose node does not answer (a partition) counts as gone after this


@dataclass
class _Remote:
    actor: object
    run_ref: object
    write_fd: int
    signalled: bool = False


class RayChildren:
    """The Ray side of broker/children.Children: spawn, reap, kill for children with a `placement`."""

    def __init__(self, address: str):
        import ray
        from ray import cloudpickle
        from broker import ray_host
        # the host class travels by value: a node needs the project's folder and .venv, not our package on
        # its Ray workers' import path
        cloudpickle.register_pickle_by_value(ray_host)
        self.ray = ray
        ray.init(address=address, namespace=f"pythonml-{os.getpid()}", log_to_driver=True,
                 configure_logging=False, ignore_reinit_error=True)
        self.host_class = ray.remote(ray_host.WorkerHost)
        self.remotes: dict[int, _Remote] = {}     # pidfd (pipe read end) -> its actor
        self.lock = threading.Lock()
        self.address = address

    def node_ip(self) -> str:
        """This node's address as the cluster sees it: where remote workers reach the broker."""
        return self.ray.util.get_node_ip_address()

    def check_fits(self, placement) -> Optional[str]:
        """Why no node of the cluster could ever hold a worker with this placement, or None."""
        want = placement.actor_options()
        need = {"CPU": want["num_cpus"], "GPU": want["num_gpus"], **want.get("resources", {})}
        if "memory" in want:
            need["memory"] = want["memory"]
        try:
            nodes = self.ray.nodes()
        except Exception as exc:
            return f"the Ray cluster at {self.address} does not answer ({_first_line(exc)})"
        for node in nodes:
            if not node.get("Alive"):
                continue
            have = node.get("Resources") or {}
            if all(have.get(k, 0.0) >= v for k, v in need.items() if v):
                return None
        return f"no live node of the Ray cluster at {self.address} has {placement.describe()}"

    def spawn(self, child) -> object:
        """Ask Ray for the actor and start the worker in it. A refusal (the cluster unreachable, bad options)
        is an exit at once, so the manager's back-off applies as for a worker that died on start."""
        read_fd, write_fd = os.pipe()
        child.pidfd, child.started_at, child.exit_code, child.exit_note = read_fd, time.time(), None, ""
        try:
            actor = self.host_class.options(**child.placement.actor_options()).remote()
            run_ref = actor.run.remote(child.argv, child.env, child.cwd)
        except Exception as exc:
            rec = _Remote(None, None, write_fd)
            with self.lock:
                self.remotes[read_fd] = rec
            log.error("Ray did not take %s: %s", child.name, _first_line(exc))
            self._signal(child, rec, 1, f"Ray did not place it: {_first_line(exc)}")
            return child
        rec = _Remote(actor, run_ref, write_fd)
        with self.lock:
            self.remotes[read_fd] = rec
        threading.Thread(target=self._wait, args=(child, rec), name=f"ray-wait-{child.name}", daemon=True).start()
        return child

    def _wait(self, child, rec: _Remote) -> None:
        """Block on the actor's `run` until the worker ends or the actor is lost; then wake the manager."""
        ray = self.ray
        code, note = -999, ""
        try:
            code = int(ray.get(rec.run_ref))
        except ray.exceptions.RayActorError as exc:
            code, note = -signal.SIGKILL, "its Ray actor was lost: " + _first_line(exc)
        except ray.exceptions.RayTaskError as exc:
            code, note = 1, "its Ray actor could not start it: " + _first_line(exc.cause if exc.cause else exc)
        except Exception as exc:   # the driver is shutting down
            note = f"lost contact with Ray: {_first_line(exc)}"
        self._signal(child, rec, code, note)

    def _signal(self, child, rec: _Remote, code: int, note: str) -> None:
        with self.lock:
            if rec.signalled:
                return
            rec.signalled = True
        child.exit_code, child.exit_note = code, note
        try:
            os.write(rec.write_fd, b"x")
        finally:
            os.close(rec.write_fd)

    def reap(self, child) -> None:
        with self.lock:
            self.remotes.pop(child.pidfd, None)

    def kill(self, child) -> None:
        """Kill the actor (and with it the worker). Its end is confirmed by Ray at once when its node answers;
        when it does not (a partition), the child counts as gone after KILL_CONFIRM_S."""
        with self.lock:
            rec = self.remotes.get(child.pidfd)
        if rec is None or rec.signalled:
            return
        try:
            self.ray.kill(rec.actor, no_restart=True)
        except Exception as exc:
            log.warning("could not kill the Ray actor of %s: %s", child.name, exc)
        timer = threading.Timer(KILL_CONFIRM_S, self._signal,
                                (child, rec, -signal.SIGKILL, "killed; its node did not confirm (unreachable?)"))
        timer.daemon = True
        timer.start()

    def kill_all(self) -> None:
        with self.lock:
            recs = list(self.remotes.values())
        for rec in recs:
            if rec.actor is None:
                continue
            try:
                self.ray.kill(rec.actor, no_restart=True)
            except Exception:
                pass

    def shutdown(self) -> None:
        """Disconnect from the cluster: every actor this driver owns ends with it."""
        self.kill_all()
        try:
            self.ray.shutdown()
        except Exception:
            pass


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
