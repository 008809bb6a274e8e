"""Process primitives: spawn a child with a pidfd (its exit is noticed at once by polling it), reap it,
kill it, and pump its stdout/stderr; the capped back-off between restarts.

Policy (which child to start, when to restart, timeouts, replay) lives in broker/process_manager.py,
the one owner of every child; routing lives in broker/router.py, which never touches a process. One
pump thread drains every child's output pipe into our own (non-blocking) stderr so that no child ever
blocks on a pipe the orchestrator never reads.
"""
from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

from common import logs

log = logging.getLogger("children")


@dataclass
class Backoff:
    """Capped exponential back-off; resets after a child ran healthy for `reset_after` seconds."""
    initial: float = 0.2
    cap: float = 10.0
    reset_after: float = 60.0
    failures: int = 0

    def next_delay(self, lived_s: float) -> float:
        if lived_s >= self.reset_after:
            self.failures = 0
        delay = min(self.cap, self.initial * (2 ** self.failures))
        self.failures += 1
        return delay


@dataclass
class Child:
    name: str
    argv: list
    env: dict
    pass_fds: tuple = ()
    popen: Optional[subprocess.Popen] = None
    pidfd: int = -1                # a pidfd; for a Ray-placed child, a pipe that is readable once it ended
    started_at: float = 0.0
    exit_code: Optional[int] = None
    placement: Optional[object] = None   # broker.ray_placement.RayPlacement: a worker actor on a Ray cluster
    cwd: Optional[str] = None            # where it runs (a Ray child: the project folder on its node)
    exit_note: str = ""                  # how a Ray child ended, when its exit code does not say it

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else -1

    def alive(self) -> bool:
        return self.exit_code is None and (self.popen is not None or self.placement is not None)


class LogPump:
    """Drains children's stdout/stderr pipes and forwards lines to our stderr without ever blocking."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.thread = threading.Thread(target=self._loop, name="log-pump", daemon=True)
        self.thread.start()

    def add(self, fd: int, name: str) -> None:
        os.set_blocking(fd, False)
        with self.lock:
            self.sel.register(fd, selectors.EVENT_READ, name)
        os.write(self.wake_w, b"x")

    def _loop(self) -> None:
        while True:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data is None:
                    try:
                        os.read(self.wake_r, 4096)
                    except OSError:
                        pass
                    continue
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    with self.lock:
                        try:
                            self.sel.unregister(key.fd)
                        except (KeyError, ValueError):
                            pass
                    os.close(key.fd)
                    continue
                logs.write_nonblocking(2, data)


class Children:
    """The live child processes by pidfd: spawn, reap, kill. Children with a placement are Ray actors on
    other nodes (`remote`: broker/ray_children.RayChildren), handled through the same calls."""

    def __init__(self, python: str = sys.executable, cwd: Optional[str] = None, remote=None):
        self.python = python
        self.cwd = cwd or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.pump = LogPump()
        self.remote = remote
        self.children: dict[int, Child] = {}   # pidfd -> child

    def spawn(self, child: Child) -> Child:
        if child.placement is not None:
            if self.remote is None:
                raise RuntimeError(f"{child.name} is placed on Ray but the service is not connected to a Ray cluster")
            self.remote.spawn(child)
            self.children[child.pidfd] = child
            return child
        env = dict(os.environ)
        env.update(child.env)
        env["PYTHONUNBUFFERED"] = "1"
        env["PML_PARENT_PID"] = str(os.getpid())
        child.popen = subprocess.Popen(
            child.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=child.pass_fds,
            start_new_session=False, close_fds=True)
        child.started_at = time.time()
        child.exit_code = None
        child.pidfd = os.pidfd_open(child.popen.pid)
        self.children[child.pidfd] = child
        # the pump owns its own descriptor of the pipe; Popen's file object is closed now
        self.pump.add(os.dup(child.popen.stdout.fileno()), child.name)
        child.popen.stdout.close()
        child.popen.stdout = None
        log.debug("spawned %s pid=%d", child.name, child.pid)
        return child

    def reap(self, pidfd: int) -> Optional[Child]:
        """Called when a pidfd becomes readable: the child has exited."""
        child = self.children.pop(pidfd, None)
        try:
            os.close(pidfd)
        except OSError:
            pass
        if child is None:
            return None
        if child.placement is not None:
            self.remote.reap(child)
            return child
        try:
            child.exit_code = child.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            child.exit_code = -999
        return child

    def kill(self, child: Child, sig: int = signal.SIGKILL) -> None:
        """SIGKILL or SIGTERM; a Ray child's actor is killed whatever the signal (the worker's own drain
        is asked for with STOP through the broker, never with a signal)."""
        if child.placement is not None:
            if child.alive():
                self.remote.kill(child)
            return
        if child.alive():
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        for child in list(self.children.values()):
            self.kill(child, signal.SIGKILL)
        for pidfd in list(self.children.keys()):
            child = self.children[pidfd]
            if child.popen is not None:
                try:
                    child.popen.wait(timeout=5)
                except Exception:
                    pass
            self.reap(pidfd)
        if self.remote is not None:
            self.remote.shutdown()


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
