"""Start the single-process peer (bench/peers/single_process.py) as a subprocess for a benchmark or test."""
from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time

from tests.service import PYTHON, ROOT


class Peer:
    """A running peer: `.address`, `.proc`, `.stop()`; a context manager."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: str):
        self.proc = proc
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        os.unlink(self.log_path)

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_peer(services: str = "vision,hf,echo", threads: int = 0, timeout: float = 300.0) -> Peer:
    """Start the peer serving `services` (comma list) and wait until it says READY (models loaded)."""
    fd, log_path = tempfile.mkstemp(prefix="pml-peer-", suffix=".log")
    args = [PYTHON, "-m", "bench.peers.single_process", "--services", services]
    if threads:
        args += ["--threads", str(threads)]
    with os.fdopen(fd, "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    end = time.time() + timeout
    while time.time() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        line = proc.stdout.readline() if ready else ""
        if line.startswith("READY "):
            return Peer(proc, int(line.split()[1]), log_path)
        if proc.poll() is not None:
            break
    peer = Peer(proc, 0, log_path)
    text = peer.log()[-4000:]
    peer.stop()
    raise RuntimeError(f"the single-process peer did not start ({services}):\n{text}")
