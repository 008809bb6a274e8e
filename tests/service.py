"""Start the real service (run.py) as a subprocess for integration tests and benchmarks, and look at it from a
test: its Stats, its child processes (a pool's worker, the facade), a worker's idle footprint, a peak RSS."""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python") if os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")) else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, proc: subprocess.Popen, port: int, stderr_path: Optional[str], own_log: bool = False):
        self.proc = proc
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.stderr_path = stderr_path
        self.own_log = own_log  # a temporary log file we created: removed by stop()
        self._channels: list = []

    def channel(self, **options) -> grpc.Channel:
        ch = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 256 * 2**20),
                                                          ("grpc.max_send_message_length", 256 * 2**20)])
        self._channels.append(ch)
        return ch

    def log(self) -> str:
        if self.stderr_path and os.path.exists(self.stderr_path):
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        return ""

    def wait_healthy(self, service: str = "", timeout: float = 120.0) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        stub = health_pb2_grpc.HealthStub(self.channel())
        end = time.time() + timeout
        last = None
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                last = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if last == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc.code()
            time.sleep(0.1)
        raise TimeoutError(f"service {service!r} not SERVING after {timeout}s (last {last}):\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        for ch in self._channels:
            ch.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.own_log and not os.environ.get("PML_KEEP_TEST_LOGS") and self.stderr_path:
            try:
                os.unlink(self.stderr_path)
            except OSError:
                pass
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_service(args=(), env: Optional[dict] = None, wait_service: Optional[str] = "",
                  timeout: float = 180.0, log_path: Optional[str] = None, port: Optional[int] = None) -> Service:
    """Start run.py on a free port; wait for READY, then (unless wait_service is None) for health SERVING."""
    port = port or free_port()
    full_env = dict(os.environ)
    full_env.update(env or {})
    own_log = log_path is None
    if own_log:
        import tempfile
        fd, log_path = tempfile.mkstemp(prefix="pythonml-test-", suffix=".log")
        os.close(fd)
    err = open(log_path, "wb")
    proc = subprocess.Popen([PYTHON, os.path.join(ROOT, "run.py"), "--port", str(port), *args], cwd=ROOT,
                            env=full_env, stdout=subprocess.PIPE, stderr=err)
    err.close()
    svc = Service(proc, port, log_path, own_log=own_log)
    end = time.time() + 30
    line = b""
    while time.time() < end:
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            line = proc.stdout.readline()
            if line.startswith(b"READY"):
                break
        if proc.poll() is not None:
            raise RuntimeError(f"run.py exited with {proc.returncode}:\n{svc.log()[-4000:]}")
    if not line.startswith(b"READY"):
        svc.stop(signal.SIGKILL)
        raise TimeoutError(f"no READY line within 30s:\n{svc.log()[-4000:]}")
    if wait_service is not None:
        try:
            svc.wait_healthy(wait_service, timeout)
        except Exception:
            svc.stop(signal.SIGKILL)
            raise
    return svc


def stats(channel, metadata=None):
    """pythonml.v1.Stats of the service behind `channel`."""
    from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
    return XG.StatsStub(channel).GetStats(X.StatsRequest(), timeout=5, metadata=metadata)


def wait_for(cond, timeout: float = 30.0, interval: float = 0.05, message: str = "condition not met in time"):
    """cond()'s first truthy value, polled every `interval` s; AssertionError(message) after `timeout` s."""
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(message)


# ------------------------------------------------------------------ the service's processes, from a test
def pool_process(channel, pool: str):
    """The psutil.Process of the one worker of `pool`, as pythonml.v1.Stats names it."""
    import psutil
    (w,) = [w for w in stats(channel).workers if w.pool == pool]
    return psutil.Process(w.pid)


def child_process(svc: Service, module: str, timeout: float = 60.0):
    """The psutil.Process under this service's run.py whose command line names `module`
    (e.g. "facade.server", "workers.vision_worker"), waiting up to `timeout` s for it to appear."""
    import psutil
    end = time.time() + timeout
    while True:
        for p in psutil.Process(svc.proc.pid).children(recursive=True):
            if module in p.cmdline():
                return p
        if time.time() >= end:
            raise AssertionError(f"no {module} process under run.py")
        time.sleep(0.1)


IDLE_HEARTBEAT_S = 1.5   # > the default --heartbeat-interval-s (1 s)


def settle(channel, proc, pool: str = "vision") -> tuple[float, int]:
    """(RSS MB, threads) of a worker once it is idle: nothing of its pool in flight and its thread count steady."""
    last = None
    for _ in range(100):
        busy = sum(w.inflight for w in stats(channel).workers if w.pool == pool)
        now = proc.num_threads()
        if not busy and now == last:
            break
        last = now
        time.sleep(0.2)
    time.sleep(IDLE_HEARTBEAT_S)   # the worker's first heartbeat while idle (Worker.on_idle: memory handed back)
    return proc.memory_info().rss / 2**20, proc.num_threads()


class PeakRSS(threading.Thread):
    """The highest RSS of a process, sampled every `interval` s from start() to stop() (which returns it)."""

    def __init__(self, proc, interval: float = 0.005):
        super().__init__(daemon=True)
        self.proc, self.interval, self.peak, self.done = proc, interval, proc.memory_info().rss, threading.Event()

    def run(self):
        import psutil
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.interval)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def cancel_after(call, n: int) -> int:
    """Read `n` messages of a server stream, then cancel it; returns how many were read (fewer: it ended)."""
    got = 0
    for _ in call:
        got += 1
        if got == n:
            call.cancel()
            break
    return got


def wait_gone(pids, timeout: float = 10.0) -> list:
    """The pids of `pids` still running (zombies count as gone) after waiting up to `timeout` s for them to end."""
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    end = time.time() + timeout
    alive = list(pids)
    while alive and time.time() < end:
        alive = [p for p in alive if running(p)]
        if alive:
            time.sleep(0.05)
    return alive
