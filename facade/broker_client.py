"""The facade's side of the broker wire: one DEALER socket, one reader task, shm slot ownership.

Each call registers an asyncio queue under its request id; the reader task routes PARTIAL / FINAL /
ERROR replies to it and releases the call's shared-memory slot on the terminal reply (the broker
guarantees exactly one per request, also when a worker dies), so slots always come back.
A caller that goes away (client cancelled / disconnected) sends CANCEL; the slot is still released
only when the terminal reply arrives, because the worker may be reading it until then.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import AsyncIterator, Callable, Optional

import zmq
import zmq.asyncio

from broker import protocol as P
from facade.errors import BrokerError
from shm.pool import SlotAllocator, SlotRef

log = logging.getLogger("facade.broker")


class BrokerClient:
    def __init__(self, endpoint: str, allocator: Optional[SlotAllocator], max_message_bytes: int = 256 * 2**20):
        self.endpoint = endpoint
        self.allocator = allocator
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"facade-{os.getpid()}".encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.sock.setsockopt(zmq.SNDHWM, 100000)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        self.sock.connect(endpoint)
        self._queues: dict[str, asyncio.Queue] = {}
        self._slots: dict[str, SlotRef] = {}
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}-"
        self.pools: dict = {}
        self.on_pools: list[Callable[[dict], None]] = []
        self.malformed = 0
        self.dropped_frames = 0
        self._reader: Optional[asyncio.Task] = None

    async def start(self, hello: dict) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        await self.sock.send_multipart(P.encode(P.HELLO, hello))

    def new_id(self) -> str:
        return self._prefix + str(next(self._ids))

    async def _read_loop(self) -> None:
        while True:
            parts = await self.sock.recv_multipart(copy=True)
            try:
                command, header, frames = P.decode(parts, P.TO_FACADE_COMMANDS)
            except P.ProtocolError as exc:
                self.malformed += 1
                log.warning("malformed broker message dropped: %s", exc)
                continue
            if command == P.POOLS:
                self.pools = header.get("pools") or {}
                for cb in self.on_pools:
                    try:
                        cb(self.pools)
                    except Exception:
                        log.exception("pool callback failed")
                continue
            rid = str(header.get("id", ""))
            if command in (P.FINAL, P.ERROR):
                ref = self._slots.pop(rid, None)
                if ref is not None and self.allocator is not None:
                    self.allocator.release(ref)
                q = self._queues.pop(rid, None)
            else:
                q = self._queues.get(rid)
            if q is not None:
                q.put_nowait((command, header, frames))

    async def _send_request(self, method: str, pool: str, payload: bytes, model: str, device: str,
                            timeout: Optional[float], frame, extra: Optional[dict], stream: Optional[str]) -> tuple:
        rid = self.new_id()
        header = {"id": rid, "method": method, "pool": pool, "model": model or "", "device": device or "",
                  "deadline": (time.time() + timeout) if timeout is not None else None, "stream": stream}
        if extra:
            header.update(extra)
        frames = [payload]
        if frame is not None:
            ref = self.allocator.put(frame) if self.allocator is not None else None
            if ref is not None:
                header["shm"] = ref.to_wire()
                self._slots[rid] = ref
            else:
                header["frame_inline"] = True
                frames.append(bytes(frame))
        q: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = q
        await self.sock.send_multipart(P.encode(P.REQUEST, header, frames), copy=False)
        return rid, q

    async def _cancel(self, rid: str) -> None:
        if rid in self._queues:
            self._queues.pop(rid, None)
            try:
                await self.sock.send_multipart(P.encode(P.CANCEL, {"id": rid}))
            except zmq.ZMQError:
                pass

    async def unary(self, method: str, pool: str, payload: bytes, *, model: str = "", device: str = "",
                    timeout: Optional[float] = None, frame=None, extra: Optional[dict] = None,
                    stream: Optional[str] = None) -> bytes:
        rid, q = await self._send_request(method, pool, payload, model, device, timeout, frame, extra, stream)
        try:
            while True:
                command, header, frames = await q.get()
                if command == P.FINAL:
                    return bytes(frames[0]) if frames else b""
                if command == P.ERROR:
                    raise BrokerError(str(header.get("code")), str(header.get("message")))
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(rid))
            raise

    async def stream(self, method: str, pool: str, payload: bytes, *, model: str = "", device: str = "",
                     timeout: Optional[float] = None, frame=None, extra: Optional[dict] = None) -> AsyncIterator[bytes]:
        rid, q = await self._send_request(method, pool, payload, model, device, timeout, frame, extra, None)
        finished = False
        try:
            while True:
                command, header, frames = await q.get()
                if command == P.PARTIAL:
                    yield bytes(frames[0]) if frames else b""
                elif command == P.FINAL:
                    finished = True
                    if frames and len(frames[0]):
                        yield bytes(frames[0])
                    return
                else:
                    finished = True
                    raise BrokerError(str(header.get("code")), str(header.get("message")))
        finally:
            if not finished:
                await asyncio.shield(self._cancel(rid))

    async def query(self, what: str) -> dict:
        method = {"models": P.BROKER_QUERY_MODELS, "stats": P.BROKER_QUERY_STATS}[what]
        raw = await self.unary(method, "", b"", timeout=10.0)
        return P.unpack_header(raw)

    async def close_stream(self, stream_id: str) -> None:
        try:
            await self.sock.send_multipart(P.encode(P.STREAM_CLOSE, {"stream": stream_id}))
        except zmq.ZMQError:
            pass

    def inflight(self) -> int:
        return len(self._queues)
