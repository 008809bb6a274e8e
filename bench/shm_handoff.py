"""Baseline and subject for the shm benchmark: hand a frame to a worker process through the
shared-memory pool (one copy in, zero-copy view) versus inline in the ZeroMQ message.

Run as a module: the parent measures; `python bench/shm_handoff.py worker ...` is the receiving worker.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from shm.pool import SlotAllocator, SlotReader, SlotRef, create_pool_fd  # noqa: E402

SLOTS, SLOT_SIZE = 4, 8 * 2**20


def worker(endpoint: str, fd: int) -> None:
    reader = SlotReader(fd, SLOTS, SLOT_SIZE)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"hi")
    while True:
        parts = sock.recv_multipart(copy=False)
        kind = bytes(parts[0])
        if kind == b"stop":
            return
        if kind == b"shm":
            slot, gen, n = (int(x) for x in bytes(parts[1]).split(b","))
            view = reader.view_of(SlotRef(slot, gen, n))
        else:
            view = parts[1].buffer
        arr = np.frombuffer(view, dtype=np.uint8).reshape(1080, 1920, 3)
        sock.send(bytes([int(arr[0, 0, 0]) ^ int(arr[-1, -1, -1])]))  # the worker touches the frame


def measure(n: int = 100) -> dict:
    frame = np.random.default_rng(0).integers(0, 255, size=(1080, 1920, 3), dtype=np.uint8).tobytes()
    fd = create_pool_fd(SLOTS, SLOT_SIZE)
    alloc = SlotAllocator(fd, SLOTS, SLOT_SIZE)
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    d = f"/tmp/pml-bench-{os.getpid()}"
    endpoint = f"ipc://{d}.sock"
    router.bind(endpoint)
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", endpoint, str(fd)], pass_fds=(fd,))
    try:
        ident, _ = router.recv_multipart()
        out = {}
        for mode in ("inline", "shm", "inline", "shm"):
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                if mode == "shm":
                    ref = alloc.put(frame)
                    router.send_multipart([ident, b"shm", f"{ref.slot},{ref.generation},{ref.nbytes}".encode()])
                    router.recv_multipart()
                    alloc.release(ref)
                else:
                    router.send_multipart([ident, b"inline", frame], copy=False)
                    router.recv_multipart()
                lat.append(1000 * (time.perf_counter() - t0))
            out[mode] = sorted(lat)[len(lat) // 2]  # the second pass of each mode wins (warm)
        router.send_multipart([ident, b"stop"])
        p.wait(10)
        return out
    finally:
        if p.poll() is None:
            p.kill()
        router.close(0)
        try:
            os.unlink(f"{d}.sock")
        except OSError:
            pass


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        print(measure())
