"""A raw peer on the broker's frontend socket, for tests that need the wire itself."""
from __future__ import annotations

import glob
import os
import uuid

import zmq

from common import wire as P
from common import proc
from protos import pythonml_pb2 as X


def run_dir_of(pid: int) -> str:
    matches = glob.glob(os.path.join(proc.runtime_root(), f"{proc.RUN_DIR_PREFIX}{pid}-*"))
    assert matches, f"no run folder for pid {pid}"
    return matches[0]


class Peer:
    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def request(self, method: str, pool: str, payload: bytes, **header) -> str:
        rid = header.pop("id", None) or uuid.uuid4().hex
        hdr = {"id": rid, "method": method, "pool": pool, "model": "", "device": "", "deadline": None, "stream": None}
        hdr.update(header)
        self.sock.send_multipart(P.encode(P.REQUEST, hdr, [payload]))
        return rid

    def echo(self, pool: str = "fake", **fields) -> str:
        extra = {k: fields.pop(k) for k in list(fields) if k in ("stream", "deadline", "model", "device", "id")}
        return self.request("pythonml.v1.Diagnostics/Echo", pool, X.EchoRequest(pool=pool, **fields).SerializeToString(), **extra)

    def recv(self, timeout_ms: int = 10000):
        if not self.sock.poll(timeout_ms):
            raise TimeoutError("no reply from the broker")
        command, header, frames = P.decode(self.sock.recv_multipart(), P.TO_FACADE_COMMANDS)
        return command, header, frames

    def recv_terminal(self, rid: str, timeout_ms: int = 10000):
        """The terminal reply of `rid`; terminal replies of other requests are kept for later calls."""
        if not hasattr(self, "_kept"):
            self._kept = {}
        if rid in self._kept:
            return self._kept.pop(rid)
        while True:
            command, header, frames = self.recv(timeout_ms)
            if command in (P.FINAL, P.ERROR):
                if header.get("id") == rid:
                    return command, header, frames
                self._kept[header.get("id")] = (command, header, frames)

    def send_raw(self, parts) -> None:
        self.sock.send_multipart(parts)

    def close(self) -> None:
        self.sock.close(0)
