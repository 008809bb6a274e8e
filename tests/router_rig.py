"""A router without processes, for unit tests: its own run folder, ZeroMQ DEALERs standing in for facades
and workers, and a pump that turns the router's loop (as the process manager's poll does) until a
condition holds. Used by the router's tests of datagrams, stream close and remote workers."""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Optional

import zmq

from broker.router import Router, RouterConfig, WorkerState
from common import wire as P


class Events:
    """The RouterEvents of a router with no process manager: remembers which workers became ready."""

    def __init__(self):
        self.ready: list = []

    def worker_ready(self, ws): self.ready.append(ws.worker_id)
    def model_loaded(self, *a): pass
    def model_unloaded(self, *a): pass
    def facade_hello(self, header): pass
    def view(self, name): return {}


class RouterRig:
    def __init__(self, shm_reader=None):
        self.folder = tempfile.mkdtemp(prefix="pml-router-")
        self.router = Router(RouterConfig(frontend=f"ipc://{self.folder}/frontend.sock",
                                          backend=f"ipc://{self.folder}/b.sock", shm_reader=shm_reader), Events())
        self.poller = zmq.Poller()
        self.poller.register(self.router.frontend, zmq.POLLIN)
        self.poller.register(self.router.backend, zmq.POLLIN)
        if self.router.dgram_fd() is not None:
            self.poller.register(self.router.dgram_fd(), zmq.POLLIN)
        self._socks: list = []

    def dealer(self, identity: bytes, side: str = "frontend") -> zmq.Socket:
        """A DEALER with `identity` connected to the router's frontend (a facade) or backend (a worker)."""
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, identity)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"ipc://{self.folder}/{'frontend.sock' if side == 'frontend' else 'b.sock'}")
        self._socks.append(s)
        return s

    def worker(self, wid: str, capacity: int = 1, remote: bool = False,
               dgram: Optional[str] = None) -> tuple[WorkerState, zmq.Socket]:
        """A worker of pool `fake` on cpu, started and READY (naming `dgram` when given)."""
        ws = WorkerState(worker_id=wid, pool="fake", device="cpu", index=len(self.router.workers), remote=remote)
        self.router.add_pool_slot("fake", "cpu")
        self.router.worker_started(ws)
        sock = self.dealer(wid.encode(), "backend")
        ready = {"capacity": capacity, "pid": 4242}
        if dgram:
            ready["dgram"] = dgram
        sock.send_multipart(P.encode(P.READY, ready))
        self.pump(lambda: ws.state == "ready")
        return ws, sock

    def pump(self, done: Callable[[], bool], rounds: int = 300) -> None:
        for _ in range(rounds):
            self.router.on_readable(dict(self.poller.poll(10)))
            if done():
                return
        raise AssertionError("the router did not get there")

    def settle(self, rounds: int = 20) -> None:
        """Turn the loop a while with nothing to wait for (to show that something did NOT happen)."""
        for _ in range(rounds):
            self.router.on_readable(dict(self.poller.poll(10)))

    def close(self) -> None:
        for s in self._socks:
            s.close(0)
        self.router.close()
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)
