"""The facade's side of the broker wire: one DEALER socket, driven by the event loop, shm slot ownership.

The socket is a plain (non-asyncio) ZeroMQ socket whose file descriptor is watched by the event loop:
when it signals, every waiting message is drained without blocking and handed to the call that waits
for it (a Future for unary calls, a Queue for streams). Sends are non-blocking (the high-water mark is
far above the number of calls in flight). This avoids a Future per socket operation, which made the
facade the most expensive hop of a round trip.

The reader releases a call's shared-memory slot on the terminal reply (the broker guarantees exactly
one per request, also when a worker dies), so slots always come back. A caller that goes away sends
CANCEL; the slot is still released only when the terminal reply arrives, because the worker may be
reading it until then.

Workers send the terminal reply of a request without partials straight to this process: a PULL socket
`reply-<pid>.sock` in the run folder, named in every REQUEST header as `reply` and watched like the
broker's socket (docs/ARCHITECTURE.md, Wire). Whichever terminal reply of a request arrives first is
taken; a later one (the broker's UNAVAILABLE for a worker that died before telling it DONE) is ignored.

Requests outside any stream, and their CANCELs, go to the broker as unix datagrams (`frontend.dgram` in
the run folder, sent from the `reply-<pid>.dgram` socket whose address the broker learned from HELLO) when
they fit in wire.DATAGRAM_MAX and the broker answered HELLO naming its socket; the rest, streams and
STREAM_CLOSE always, take the DEALER. A CANCEL takes the channel its REQUEST took (docs/ARCHITECTURE.md,
"Datagram hops"). PML_DGRAM_HOPS=0 turns this off.

Each REQUEST carries `caller`, the client connection of the gRPC call it serves (facade/caller.py), by
which the broker shares each pool round robin between callers.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from typing import AsyncIterator, Callable, Optional

import zmq

from common import wire as P
from common import payload as codec
from common.options import as_bool
from facade.caller import CALLER
from facade.errors import BrokerError
from shm.pool import SlotAllocator, SlotRef

log = logging.getLogger("facade.broker")


def dgram_replies_on() -> bool:
    """PML_DGRAM_REPLIES (default on): workers may send terminal replies as datagrams."""
    return as_bool(os.environ.get("PML_DGRAM_REPLIES"), True, name="PML_DGRAM_REPLIES")


def reply_datagram_path(reply_endpoint: str) -> str:
    """The facade's datagram socket beside its ZeroMQ reply socket: `<run folder>/reply-<pid>.dgram`; ''
    when there is no direct-reply endpoint, or PML_DGRAM_REPLIES=0 and PML_DGRAM_HOPS=0 (then everything
    takes ZeroMQ). It receives datagram replies and sends datagram requests (the broker knows it by this
    address)."""
    if not reply_endpoint or not (dgram_replies_on() or P.dgram_hops_on()):
        return ""
    return reply_endpoint[len("ipc://"):-len(".sock")] + ".dgram"


def reply_endpoint_for(broker_endpoint: str) -> str:
    """The facade's direct-reply socket: `ipc://<run folder>/reply-<pid>.sock` beside the broker's ipc
    frontend (the private 0700 folder); '' when the broker is not reached over ipc."""
    if not broker_endpoint.startswith("ipc://"):
        return ""
    return f"ipc://{os.path.dirname(broker_endpoint[len('ipc://'):])}/reply-{os.getpid()}.sock"


class BrokerClient:
    def __init__(self, endpoint: str, allocator: Optional[SlotAllocator], max_message_bytes: int = 256 * 2**20):
        self.endpoint = endpoint
        self.allocator = allocator
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"facade-{os.getpid()}".encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.sock.setsockopt(zmq.SNDHWM, 1000000)
        self.sock.setsockopt(zmq.RCVHWM, 1000000)
        self.sock.connect(endpoint)
        self._waiters: dict[str, object] = {}    # request id -> Future (unary) or Queue (streams)
        self._slots: dict[str, SlotRef] = {}
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}-"
        self.pools: dict = {}
        self.on_pools: list[Callable[[dict], None]] = []
        self.malformed = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # direct replies: workers send a request's terminal reply (when it had no partials) straight to this
        # PULL socket, named in the REQUEST header `reply`, and tell the broker DONE (common/wire.py)
        self.cores = None   # facade/cores.FacadeCores, told of every request (server.py sets it)
        self.reply_endpoint = reply_endpoint_for(endpoint)
        self.replies: Optional[zmq.Socket] = None
        if self.reply_endpoint:
            self.replies = self.ctx.socket(zmq.PULL)
            self.replies.setsockopt(zmq.LINGER, 0)
            self.replies.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            self.replies.setsockopt(zmq.RCVHWM, 1000000)
            try:
                self.replies.bind(self.reply_endpoint)
            except zmq.ZMQError as exc:  # replies then all come through the broker, as before
                log.warning("direct reply socket %s not bound (%s): replies go through the broker",
                            self.reply_endpoint, exc)
                self.replies.close(0)
                self.replies, self.reply_endpoint = None, ""
        # small terminal replies come as one unix datagram (common/wire.py DATAGRAM_MAX), the rest on `replies`
        self.dgram_path = reply_datagram_path(self.reply_endpoint)
        self.dgram: Optional[socket.socket] = None
        if self.dgram_path:
            self.dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                if os.path.exists(self.dgram_path):   # a facade of an earlier life with our pid
                    os.unlink(self.dgram_path)
                self.dgram.bind(self.dgram_path)
                self.dgram.setblocking(False)
                self.dgram.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
            except OSError as exc:
                log.warning("datagram reply socket %s not bound (%s): direct replies take ZeroMQ", self.dgram_path, exc)
                self.dgram.close()
                self.dgram, self.dgram_path = None, ""
        self._dgram_replies = bool(self.dgram_path) and dgram_replies_on()
        # datagram requests: to the broker's socket named in its answer to our HELLO (POOLS `dgram`), only
        # after that answer (the broker then knows our address); rids sent so, for their CANCEL's channel
        self._hops = bool(self.dgram_path) and P.dgram_hops_on()
        self.broker_dgram = ""
        self._dgram_rids: set = set()

    async def start(self, hello: dict) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.getsockopt(zmq.FD), self._drain)
        if self.replies is not None:
            self._loop.add_reader(self.replies.getsockopt(zmq.FD), self._drain_replies)
        if self.dgram is not None:
            self._loop.add_reader(self.dgram.fileno(), self._drain_datagrams)
        if self._hops:
            hello = dict(hello, dgram=self.dgram_path)
        self._send(P.encode(P.HELLO, hello))

    def new_id(self) -> str:
        return self._prefix + str(next(self._ids))

    # ---- socket plumbing -------------------------------------------------------------------------
    def _send(self, parts: list) -> None:
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # HWM reached (never in practice): block briefly rather than lose a request
            self.sock.send_multipart(parts, copy=False)
        # ZeroMQ's FD is edge-triggered and a send can consume the edge: look for input now, in this
        # turn of the loop (reading EVENTS re-arms the edge; a reply arriving later signals the FD again)
        if self._loop is not None:
            self._drain()

    def _drain(self) -> None:
        self._drain_socket(self.sock)

    def _drain_replies(self) -> None:
        self._drain_socket(self.replies)

    def _drain_datagrams(self) -> None:
        while True:
            try:
                data = self.dgram.recv(P.DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return
            try:
                parts = P.split_datagram(data)
            except P.ProtocolError as exc:
                self.malformed += 1
                log.warning("malformed reply datagram dropped: %s", exc)
                continue
            self._on_message(parts)

    def _drain_socket(self, sock: zmq.Socket) -> None:
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_message(parts)

    def _on_message(self, parts: list) -> None:
        try:
            command, header, frames = P.decode(parts, P.TO_FACADE_COMMANDS)
        except P.ProtocolError as exc:
            self.malformed += 1
            log.warning("malformed broker message dropped: %s", exc)
            return
        if command == P.POOLS:
            self.pools = header.get("pools") or {}
            path = header.get("dgram")
            if self._hops and path == os.path.join(os.path.dirname(self.dgram_path), "frontend.dgram"):
                self.broker_dgram = path
            for cb in self.on_pools:
                try:
                    cb(self.pools)
                except Exception:
                    log.exception("pool callback failed")
            return
        rid = str(header.get("id", ""))
        terminal = command != P.PARTIAL
        if terminal:
            self._dgram_rids.discard(rid)
            ref = self._slots.pop(rid, None)
            if ref is not None and self.allocator is not None:
                self.allocator.release(ref)
            waiter = self._waiters.pop(rid, None)
        else:
            waiter = self._waiters.get(rid)
        if waiter is None:
            return
        if isinstance(waiter, asyncio.Future):
            if not waiter.done():
                waiter.set_result((command, header, frames))
        else:
            waiter.put_nowait((command, header, frames))

    # ---- calls -----------------------------------------------------------------------------------
    def _send_request(self, method: str, pool: str, payload: bytes, model: str, device: str,
                      timeout: Optional[float], frame, extra: Optional[dict], stream: Optional[str],
                      waiter) -> str:
        rid = self.new_id()
        if self.cores is not None:
            self.cores.request(pool)   # before it leaves: its reply finds the facade on its cores
        header = {"id": rid, "method": method, "pool": pool, "model": model or "", "device": device or "",
                  "deadline": (time.time() + timeout) if timeout is not None else None, "stream": stream,
                  "caller": CALLER.get()}
        if self.reply_endpoint:
            header["reply"] = self.reply_endpoint
            if self._dgram_replies:
                header["reply_dgram"] = self.dgram_path
        if extra:
            header.update(extra)
        frames = [payload]
        if frame is not None:  # the side buffer (common/payload.py): one shm slot, else inline
            ref = codec.attach(header, frames, frame, self.allocator.put if self.allocator is not None else None)
            if ref is not None:
                self._slots[rid] = ref
        self._waiters[rid] = waiter
        parts = P.encode(P.REQUEST, header, frames)
        if stream is None and self._datagram_sent(parts):
            self._dgram_rids.add(rid)
        else:
            self._send(parts)
        return rid

    def _datagram_sent(self, parts: list) -> bool:
        """One message to the broker as a datagram; False (nothing sent) when the broker named no socket,
        the message is over wire.DATAGRAM_MAX or the broker's queue is full (it then takes the DEALER)."""
        if not self.broker_dgram:
            return False
        return P.send_datagram(self.dgram, self.broker_dgram, parts)

    def _cancel(self, rid: str) -> None:
        if self._waiters.pop(rid, None) is not None:
            parts = P.encode(P.CANCEL, {"id": rid})
            # the channel of its REQUEST, so it cannot overtake it; if that datagram cannot go now, the
            # DEALER (the broker remembers a CANCEL that came before its REQUEST)
            if rid in self._dgram_rids and self._datagram_sent(parts):
                return
            try:
                self._send(parts)
            except zmq.ZMQError:
                pass

    async def unary(self, method: str, pool: str, payload: bytes, *, model: str = "", device: str = "",
                    timeout: Optional[float] = None, frame=None, extra: Optional[dict] = None,
                    stream: Optional[str] = None) -> bytes:
        fut = self._loop.create_future()
        rid = self._send_request(method, pool, payload, model, device, timeout, frame, extra, stream, fut)
        try:
            command, header, frames = await fut
        except asyncio.CancelledError:
            self._cancel(rid)
            raise
        if command == P.FINAL:
            return frames[0] if frames else b""
        if command == P.ERROR:
            raise BrokerError(str(header.get("code")), str(header.get("message")))
        raise BrokerError("INTERNAL", f"unexpected reply {command!r} to a unary call")

    async def stream(self, method: str, pool: str, payload: bytes, *, model: str = "", device: str = "",
                     timeout: Optional[float] = None, frame=None, extra: Optional[dict] = None) -> AsyncIterator[bytes]:
        q: asyncio.Queue = asyncio.Queue()
        rid = self._send_request(method, pool, payload, model, device, timeout, frame, extra, None, q)
        finished = False
        try:
            while True:
                command, header, frames = await q.get()
                if command == P.PARTIAL:
                    yield frames[0] if frames else b""
                elif command == P.FINAL:
                    finished = True
                    if frames and len(frames[0]):
                        yield frames[0]
                    return
                else:
                    finished = True
                    raise BrokerError(str(header.get("code")), str(header.get("message")))
        finally:
            if not finished:
                self._cancel(rid)

    async def query(self, what: str) -> dict:
        method = {"models": P.BROKER_QUERY_MODELS, "stats": P.BROKER_QUERY_STATS}[what]
        raw = await self.unary(method, "", b"", timeout=10.0)
        return P.unpack_header(raw)

    async def close_stream(self, stream_id: str) -> None:
        try:
            self._send(P.encode(P.STREAM_CLOSE, {"stream": stream_id}))
        except zmq.ZMQError:
            pass

    def inflight(self) -> int:
        return len(self._waiters)
