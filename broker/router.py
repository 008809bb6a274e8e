"""The router: queues, credits and dispatch (DESIGN §2). It never touches a process.

Frontend ROUTER (the facade's DEALER) and backend ROUTER (each worker's DEALER). Requests are routed by
pool and device, then by model affinity; a stream stays pinned to the worker that served its first
frame. Each worker announces a capacity and gets at most that many requests at once; the rest wait in a
bounded queue per pool with one sub-queue per caller (client connection), served round robin
(broker/fair_queue.py): a full queue, or a caller beyond its share of it, answers RESOURCE_EXHAUSTED at
once, a request whose deadline passes in the queue answers DEADLINE_EXCEEDED without reaching a worker.
Every request gets exactly one terminal reply (FINAL or ERROR): the facade relies on it to release
shared-memory slots.

Births and deaths of workers come from the process manager (broker/process_manager.py) as events
(`worker_started`, `worker_exited`); what the router learns that the manager needs (a worker is READY,
a model was loaded or unloaded, the facade said HELLO, a view was asked for) goes back through
`RouterEvents`. Liveness fields of a worker (`last_seen`, `last_reply`, its in-flight requests) are
kept here, where messages arrive, and read by the manager's timers.

Datagram hops (docs/ARCHITECTURE.md): beside the frontend ROUTER the broker binds `frontend.dgram` in the
run folder; a facade that said HELLO naming its datagram socket may send REQUESTs outside any stream and
their CANCELs there (known by the sender's address). A local worker that named its `w-<worker id>.dgram`
in READY gets such REQUESTs, and their CANCELs, as datagrams when they fit, and sends its DONEs from that
socket to `frontend.dgram` (known by that address, only DONE accepted so). A CANCEL follows the channel
its REQUEST took; one that comes first anyway (its datagram could not go) is remembered for a while.
PML_DGRAM_HOPS=0 turns it off.
"""
from __future__ import annotations

import itertools
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import zmq

from common import wire as P
from broker.fair_queue import FairQueue
from common.methods import LOAD_MODEL
from common.payload import INLINE, SHM
from common.recent import Recent
from shm.pool import SlotRef, StaleSlotError

log = logging.getLogger("broker")

RETIRED_KEPT = 1024     # ids of dead workers remembered, to fence one that comes back after a partition
EARLY_CANCELS_KEPT = 1024   # CANCELs of requests not seen (yet): one that overtook its REQUEST is applied


@dataclass
class Request:
    id: str
    facade: bytes
    header: dict
    frames: list
    pool: str
    device: str
    model: str
    stream: Optional[str]
    deadline: Optional[float]
    enqueued_at: float
    internal: bool = False          # replay loads: replies are consumed by the broker
    worker_id: Optional[str] = None
    raw_header: Optional[bytes] = None  # the facade's packed header, forwarded to the worker untouched
    caller: str = ""                # who sent it (the client connection): the fair queue's key
    last_activity: float = 0.0      # dispatch time, then the time of its last partial (progress watchdog)
    dgram: bool = False             # sent to its worker as a datagram: its CANCEL goes the same way


@dataclass
class WorkerState:
    """The router's view of one worker process: what it can take, what it holds, what it last said."""
    worker_id: str
    pool: str
    device: str
    index: int                       # its place in the pool (ties in load go to the lowest)
    pid: int = 0
    started_at: float = field(default_factory=time.time)
    state: str = "starting"          # starting | ready | draining | dead
    capacity: int = 1
    inflight: dict = field(default_factory=dict)   # request id -> Request
    last_seen: float = field(default_factory=time.time)
    status: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)     # model_id -> summary
    models_version: int = 0                        # the worker's load/unload counter we have seen
    ready_at: float = 0.0
    last_reply: float = field(default_factory=time.time)   # last PARTIAL/FINAL/ERROR (progress watchdog)
    served: int = 0
    stop_sent: bool = False
    kill_reason: Optional[str] = None   # set by the process manager when it kills it for lack of progress
    remote: bool = False             # on another node (a Ray actor): no shared memory, frames travel inline
    dgram: str = ""                  # its request datagram socket (READY `dgram`, local workers only)

    def free(self) -> int:
        return self.capacity - len(self.inflight) if self.state == "ready" else 0


class RouterEvents(Protocol):
    """What the router tells its owner (the process manager)."""
    def worker_ready(self, ws: WorkerState) -> None: ...
    def model_loaded(self, ws: WorkerState, model_id: str, method: str, payload: bytes) -> None: ...
    def model_unloaded(self, ws: WorkerState, model_id: str) -> None: ...
    def facade_hello(self, header: dict) -> None: ...
    def view(self, name: str) -> dict: ...


@dataclass
class RouterConfig:
    frontend: str
    backend: str
    queue_limit: int = 256
    caller_queue_limit: int = 0      # queued requests per caller and pool (0 = only the fair share)
    queue_timeout_s: float = 30.0
    max_message_bytes: int = 256 * 2**20
    curve_secret: Optional[bytes] = None
    curve_public: Optional[bytes] = None
    extra_backends: tuple = ()       # more endpoints of the worker socket (remote workers' tcp beside local ipc)
    shm_reader: Optional[object] = None   # shm.pool.SlotReader: copies a frame inline for a remote worker


class Router:
    def __init__(self, config: RouterConfig, events: RouterEvents):
        self.cfg = config
        self.events = events
        self.zctx = zmq.Context.instance()
        self.frontend = self._router(config.frontend)
        # a facade that connects again under the identity of one whose connection the broker has not seen close
        # yet (same process: its pid names it) takes that identity over instead of being refused silently
        self.frontend.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.backend = self._router(config.backend, curve=True, extra=config.extra_backends)
        # datagram hops: requests from facades (known by address, from their HELLO) and to local workers
        self.run_dir = ""
        self.dgram: Optional[socket.socket] = None     # bound: frontend.dgram
        self.wsend: Optional[socket.socket] = None     # unbound: sends to workers' w-<id>.dgram
        self.dgram_facades: dict[str, bytes] = {}      # facade datagram address -> its ZeroMQ identity
        self.dgram_workers: dict[str, bytes] = {}      # local worker's w-<id>.dgram -> its ZeroMQ identity
        self.early_cancels = Recent(EARLY_CANCELS_KEPT)
        if P.ipc_folder(config.frontend) and P.dgram_hops_on():
            self.run_dir = P.ipc_folder(config.frontend)
            path = f"{self.run_dir}/frontend.dgram"
            try:
                self.dgram = P.bind_datagram(path)
            except OSError as exc:
                log.warning("datagram socket %s not bound (%s): requests take ZeroMQ", path, exc)
            else:
                self.wsend = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.wsend.setblocking(False)
        self.configured: dict[str, dict[str, int]] = {}      # pool -> device -> workers configured
        self.workers: dict[str, WorkerState] = {}          # worker_id -> state
        self.queues: dict[str, FairQueue] = {}
        self.requests: dict[str, Request] = {}              # every request not yet answered
        self.streams: dict[str, str] = {}                    # stream id -> worker id
        self.closing: set = set()                            # closed by the facade, frames still queued
        self.dead_streams: dict[str, str] = {}               # stream id -> reason (worker died)
        self.facades: set = set()
        self.retired = Recent(RETIRED_KEPT)   # dead worker ids -> told to stop (fencing)
        self.counters = {"malformed": 0, "rejected": {}, "expired": {}, "unroutable_replies": 0}
        self._ids = itertools.count()
        self._last_pools: dict = {}

    def _router(self, endpoint: str, curve: bool = False, extra: tuple = ()) -> zmq.Socket:
        s = self.zctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_bytes)
        s.setsockopt(zmq.SNDHWM, 100000)
        s.setsockopt(zmq.RCVHWM, 100000)
        endpoints = (endpoint, *extra)
        if curve and any(e.startswith("tcp://") for e in endpoints):
            if not self.cfg.curve_secret:
                raise ValueError("a tcp:// worker endpoint requires CurveZMQ keys")
            s.curve_server = True     # every connection of the socket, ipc ones included
            s.curve_secretkey = self.cfg.curve_secret
            s.curve_publickey = self.cfg.curve_public
        for e in endpoints:
            s.bind(e)
        return s

    def remote_endpoint(self) -> str:
        """The tcp endpoint the worker socket really bound (a wildcard port resolved): what remote workers
        connect to."""
        for e in (self.cfg.backend, *self.cfg.extra_backends):
            if e.startswith("tcp://"):
                return self.backend.getsockopt_string(zmq.LAST_ENDPOINT) if e.endswith(":*") else e
        return ""

    # ---------------------------------------------------------------- topology (from the process manager)
    def add_pool_slot(self, pool: str, device: str) -> int:
        """One more worker place in (pool, device); returns its index there."""
        devices = self.configured.setdefault(pool, {})
        devices[device] = devices.get(device, 0) + 1
        self.queues.setdefault(pool, FairQueue(pool, self.cfg.queue_limit, self.cfg.caller_queue_limit))
        self.counters["rejected"].setdefault(pool, 0)
        self.counters["expired"].setdefault(pool, 0)
        return devices[device] - 1

    def worker_started(self, ws: WorkerState) -> None:
        self.workers[ws.worker_id] = ws

    def worker_exited(self, ws: WorkerState, requests_message: str, streams_message: str) -> None:
        """A worker process is gone: every request it held fails UNAVAILABLE with `requests_message`, its
        streams are closed with `streams_message` (their state died with it)."""
        ws.state = "dead"
        self.workers.pop(ws.worker_id, None)
        self.dgram_workers.pop(ws.dgram, None)
        self.retired.remember(ws.worker_id, False)
        for req in list(ws.inflight.values()):
            self._error(req, "UNAVAILABLE", requests_message)
        ws.inflight.clear()
        for stream, wid in list(self.streams.items()):
            if wid == ws.worker_id:
                del self.streams[stream]
                self.dead_streams[stream] = streams_message
        self.pools_changed()

    def pools(self) -> dict:
        out: dict = {}
        live: dict = {}
        for ws in self.workers.values():
            if ws.state in ("ready", "draining"):
                live[(ws.pool, ws.device)] = live.get((ws.pool, ws.device), 0) + 1
        for pool, devices in self.configured.items():
            p = out.setdefault(pool, {"live": 0, "configured": 0, "devices": {}})
            for device, n in devices.items():
                up = live.get((pool, device), 0)
                p["configured"] += n
                p["live"] += up
                p["devices"][device] = up
        return out

    def pools_changed(self) -> None:
        pools = self.pools()
        if pools == self._last_pools:
            return
        self._last_pools = pools
        for facade in list(self.facades):
            self._send_facade(facade, P.POOLS, {"pools": pools})

    def submit_internal(self, ws: WorkerState, method: str, model: str, payload: bytes) -> None:
        """A request of the broker's own (a replayed load) straight to `ws`; its reply is only logged."""
        rid = f"replay-{next(self._ids)}"
        req = Request(id=rid, facade=b"", header={"id": rid, "method": method, "pool": ws.pool,
                                                   "device": ws.device, "model": model, "replay": True},
                      frames=[payload], pool=ws.pool, device=ws.device, model=model, stream=None,
                      deadline=None, enqueued_at=time.time(), internal=True, worker_id=ws.worker_id,
                      last_activity=time.time())
        self.requests[rid] = req
        ws.inflight[rid] = req
        self._send_worker(ws, P.REQUEST, req.header, req.frames)

    def _fence(self, wid: str) -> None:
        """A worker we counted as dead spoke again (its node was unreachable, not gone, and a successor has
        its place): its replies are dropped and it is told, once, to stop."""
        if self.retired[wid]:
            return
        self.retired[wid] = True
        log.warning("%s was replaced while it could not be reached and is back: telling it to stop", wid)
        try:
            self.backend.send_multipart([wid.encode(), *P.encode(P.STOP, {})], copy=False)
        except zmq.ZMQError:
            pass

    def send_stop(self, ws: WorkerState) -> None:
        ws.stop_sent = True
        self._send_worker(ws, P.STOP, {})

    # ---------------------------------------------------------------- sending
    def _send_facade(self, facade: bytes, command: bytes, header, frames=()) -> None:
        try:
            self.frontend.send_multipart([facade, *P.encode(command, header, frames)], copy=False)
        except zmq.ZMQError as exc:  # facade gone (EHOSTUNREACH under ROUTER_MANDATORY)
            self.counters["unroutable_replies"] += 1
            log.debug("reply to vanished facade dropped: %s", exc)

    def _send_worker(self, ws: WorkerState, command: bytes, header: dict, frames=(), dgram: bool = False) -> bool:
        """One message to a worker; with `dgram`, as a datagram to its socket when it fits and can go now
        (see _datagram_to), else on the backend ROUTER."""
        if dgram and self._datagram_to(ws, P.encode(command, header, frames)):
            return True
        try:
            self.backend.send_multipart([ws.worker_id.encode(), *P.encode(command, header, frames)], copy=False)
            return True
        except zmq.ZMQError as exc:
            log.warning("cannot reach %s: %s", ws.worker_id, exc)
            return False

    def _datagram_to(self, ws: WorkerState, parts: list) -> bool:
        """True when `parts` went to the worker's datagram socket; False (nothing sent) when it has none
        (remote, turned off, not READY), the message is over wire.DATAGRAM_MAX, or the worker's queue is
        full or its socket gone."""
        if self.wsend is None or not ws.dgram or ws.remote:
            return False
        return P.send_datagram(self.wsend, ws.dgram, parts)

    def _finish(self, req: Request, command: bytes, header: dict, frames=(), raw_header: Optional[bytes] = None) -> None:
        """Send the terminal reply of a request (exactly once) and forget it. DONE: the worker sent the
        reply straight to the facade; only forget it."""
        if self.requests.pop(req.id, None) is None:
            return
        if req.worker_id:
            ws = self.workers.get(req.worker_id)
            if ws is not None:
                ws.inflight.pop(req.id, None)
        if req.internal:
            self._on_internal_reply(req, command, header)
            return
        if command != P.DONE:
            self._send_facade(req.facade, command, raw_header or header, frames)

    def _error(self, req: Request, code: str, message: str) -> None:
        self._finish(req, P.ERROR, P.error_header(req.id, code, message))

    # ---------------------------------------------------------------- facade messages
    def _on_frontend(self, parts: list, via_dgram: bool = False) -> None:
        if len(parts) < 2:
            self.counters["malformed"] += 1
            return
        facade = bytes(parts[0])
        try:
            command, header, frames = P.decode(parts[1:], P.DGRAM_COMMANDS if via_dgram else P.FACADE_COMMANDS)
            if via_dgram and command == P.REQUEST and header.get("stream") is not None:
                raise P.ProtocolError("a stream's request as a datagram")   # streams keep ZeroMQ (order)
        except P.ProtocolError as exc:
            self.counters["malformed"] += 1
            log.warning("dropped malformed frontend message: %s", exc)
            return
        self.facades.add(facade)
        if command == P.REQUEST:
            self._on_request(facade, header, frames, raw_header=parts[3])
        elif command == P.CANCEL:
            self._on_cancel(str(header.get("id", "")))
        elif command == P.STREAM_CLOSE:
            self._on_stream_close(str(header.get("stream", "")))
        elif command == P.HELLO:
            self.events.facade_hello(header)
            answer = {"pools": self.pools()}
            path = header.get("dgram")
            if self.dgram is not None and P.named_in(path, self.run_dir, "reply-", ".dgram"):
                for old in [a for a, f in self.dgram_facades.items() if f == facade]:
                    del self.dgram_facades[old]
                self.dgram_facades[path] = facade
                answer["dgram"] = f"{self.run_dir}/frontend.dgram"
            self._send_facade(facade, P.POOLS, answer)

    def _on_request(self, facade: bytes, header: dict, frames: list, raw_header: Optional[bytes] = None) -> None:
        rid = header.get("id")
        method = header.get("method")
        if not isinstance(rid, str) or not isinstance(method, str) or not rid:
            self.counters["malformed"] += 1
            return
        if rid in self.requests:
            self._send_facade(facade, P.ERROR, P.error_header(rid, "ALREADY_EXISTS", f"request id {rid} is in use"))
            return
        if method in (P.BROKER_QUERY_MODELS, P.BROKER_QUERY_STATS):
            view = self.events.view(method)
            self._send_facade(facade, P.FINAL, {"id": rid, "msgpack": True}, [P.pack_header(view)])
            return
        pool = str(header.get("pool") or "")
        deadline = header.get("deadline")
        if deadline is not None and not isinstance(deadline, (int, float)):
            deadline = None
        req = Request(id=rid, facade=facade, header=header, frames=frames, pool=pool,
                      device=str(header.get("device") or ""), model=str(header.get("model") or ""),
                      stream=(str(header["stream"]) if header.get("stream") is not None else None),
                      deadline=deadline, enqueued_at=time.time(), raw_header=raw_header,
                      caller=str(header.get("caller") or "")[:200])
        self.requests[rid] = req
        if self.early_cancels and self.early_cancels.pop(rid, 1) is None:
            self._error(req, "CANCELLED", "cancelled by the client before it reached a worker")
            return
        if pool not in self.queues:
            configured = ", ".join(sorted(self.queues)) or "none"
            self._error(req, "UNIMPLEMENTED", f"pool '{pool}' is not running in this service (pools: {configured}); "
                                               f"start run.py with --pools including it")
            return
        if req.device and req.device not in self.configured[pool]:
            devices = sorted(self.configured[pool])
            self._error(req, "INVALID_ARGUMENT", f"device '{req.device}' has no {pool} worker (available: {', '.join(devices)})")
            return
        if req.stream is not None and req.stream in self.dead_streams:
            self._error(req, "UNAVAILABLE", self.dead_streams[req.stream])
            return
        if deadline is not None and time.time() >= deadline:
            self.counters["expired"][pool] += 1
            self._error(req, "DEADLINE_EXCEEDED", f"deadline expired before {method} could be queued")
            return
        if self._try_dispatch(req):
            return
        q = self.queues[pool]
        accepted, shed, refusal = q.offer(req)
        if shed is not None:   # a caller above its share made room for one below it
            self.counters["rejected"][pool] += 1
            self._error(shed, "RESOURCE_EXHAUSTED", q.shed_message(shed))
        if not accepted:
            self.counters["rejected"][pool] += 1
            self._error(req, "RESOURCE_EXHAUSTED", refusal)

    def _on_cancel(self, rid: str) -> None:
        req = self.requests.get(rid)
        if req is None:
            # it may have overtaken its REQUEST (a datagram REQUEST, its CANCEL on ZeroMQ): remember it
            self.early_cancels.remember(rid)
            return
        if req.worker_id is None:
            try:
                self.queues[req.pool].remove(req)
            except (KeyError, ValueError):
                pass
            self._error(req, "CANCELLED", "cancelled by the client before it reached a worker")
            if self.closing:
                self._flush_closing()
            return
        ws = self.workers.get(req.worker_id)
        if ws is not None:
            self._send_worker(ws, P.CANCEL, {"id": rid}, dgram=req.dgram)

    def _on_stream_close(self, stream: str) -> None:
        """The facade closed a stream. Its frames still waiting here for a credit go to its worker first:
        the close follows the last of them out of the queue (dispatched, cancelled, expired or dropped)."""
        if self._queued_of(stream):
            self.closing.add(stream)
            return
        self._close_stream(stream)

    def _queued_of(self, stream: str) -> bool:
        return any(r.stream == stream for q in self.queues.values() for r in q)

    def _flush_closing(self) -> None:
        """Close the streams whose STREAM_CLOSE waited for their queued frames, once none is queued."""
        for stream in [s for s in self.closing if not self._queued_of(s)]:
            self._close_stream(stream)

    def _close_stream(self, stream: str) -> None:
        self.closing.discard(stream)
        self.dead_streams.pop(stream, None)
        wid = self.streams.pop(stream, None)
        ws = self.workers.get(wid) if wid else None
        if ws is not None and ws.state != "dead":
            self._send_worker(ws, P.STREAM_CLOSE, {"stream": stream})

    def forget_facade(self, facade: bytes) -> int:
        """A facade died: its callers are gone, so drop its queued requests and cancel its in-flight ones
        (workers stop early; their late replies are dropped). Returns how many requests it had."""
        self.facades.discard(facade)
        for addr in [a for a, f in self.dgram_facades.items() if f == facade]:
            del self.dgram_facades[addr]
        mine = [r for r in self.requests.values() if r.facade == facade and not r.internal]
        for req in mine:
            if req.worker_id is None:
                try:
                    self.queues[req.pool].remove(req)
                except (KeyError, ValueError):
                    pass
                self.requests.pop(req.id, None)
            else:
                ws = self.workers.get(req.worker_id)
                if ws is not None:
                    self._send_worker(ws, P.CANCEL, {"id": req.id}, dgram=req.dgram)
        if self.closing:
            self._flush_closing()
        return len(mine)

    # ---------------------------------------------------------------- routing
    def _candidates(self, req: Request) -> list:
        if req.stream is not None and req.stream in self.streams:
            ws = self.workers.get(self.streams[req.stream])
            return [ws] if ws is not None else []
        return [ws for ws in self.workers.values() if ws.pool == req.pool and ws.state == "ready"
                and (not req.device or ws.device == req.device)]

    def _pick(self, req: Request) -> Optional[WorkerState]:
        cands = self._candidates(req)
        if not cands:
            return None
        if req.model:
            with_model = [w for w in cands if req.model in w.models]
            if with_model:
                cands = with_model
            elif any(req.model in w.models for w in self.workers.values()
                     if w.pool == req.pool and w.state in ("starting", "ready", "draining")
                     and (not req.device or w.device == req.device)):
                return None  # wait for the worker that has the model rather than loading it twice
        free = [w for w in cands if w.free() > 0]
        if not free:
            return None
        # a frame in shared memory goes to a local worker when one is free: a remote one gets a copy inline
        in_shm = SHM in req.header
        return min(free, key=lambda w: (in_shm and w.remote, len(w.inflight) / max(1, w.capacity), w.index))

    def _try_dispatch(self, req: Request) -> bool:
        ws = self._pick(req)
        if ws is None:
            return False
        req.worker_id = ws.worker_id
        req.last_activity = time.time()
        ws.inflight[req.id] = req
        if req.stream is not None:
            self.streams.setdefault(req.stream, ws.worker_id)
        header, frames = req.raw_header or req.header, req.frames
        if ws.remote and SHM in req.header:
            try:
                header, frames = self._inline(req)
            except (StaleSlotError, ValueError) as exc:
                ws.inflight.pop(req.id, None)
                self._error(req, "ABORTED", f"the frame for a remote worker could not be read ({exc}); resend it")
                return True
        # a request outside any stream may go as a datagram (its CANCEL then too); a stream's requests and
        # its STREAM_CLOSE always take the ROUTER, so they keep their order
        req.dgram = req.stream is None and self._datagram_to(ws, P.encode(P.REQUEST, header, frames))
        if not req.dgram and not self._send_worker(ws, P.REQUEST, header, frames):
            ws.inflight.pop(req.id, None)
            req.worker_id = None
            return False
        req.frames = []  # the bytes now belong to the worker's socket
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dispatched %s %s (model=%r stream=%s) to %s", req.id, req.header.get("method"), req.model,
                      req.stream, ws.worker_id)
        return True

    def _inline(self, req: Request) -> tuple:
        """The request with its shared-memory frame copied into the message (another node has no access to
        this machine's shared memory); the facade still frees the slot on the terminal reply."""
        if self.cfg.shm_reader is None:
            raise ValueError("the broker has no view of the shared-memory pool")
        header = dict(req.header)
        view = self.cfg.shm_reader.view_of(SlotRef.from_wire(header.pop(SHM)))
        header[INLINE] = True
        return header, [req.frames[0], bytes(view)]

    def _has_credit(self, pool: str) -> bool:
        return any(ws.pool == pool and ws.free() > 0 for ws in self.workers.values())

    def _dispatch_queued(self, sweep: bool = False) -> None:
        """Hand free credit to queued requests, round robin between callers (FairQueue.serve). With
        `sweep` (the 20 ms timer), also answer the queued requests that expired, lost their stream or
        waited longer than queue_timeout_s for a worker that could take them."""
        now = time.time()
        for pool, q in self.queues.items():
            if not q:
                continue
            if self._has_credit(pool):
                q.serve(lambda req: (req.deadline is None or now < req.deadline) and self._try_dispatch(req),
                        lambda: self._has_credit(pool))
            if sweep and q:
                for req in q.sweep(lambda r: self._queued_drop_reason(r, now) is not None):
                    code, message = self._queued_drop_reason(req, now)
                    if code == "DEADLINE_EXCEEDED":
                        self.counters["expired"][pool] += 1
                    self._error(req, code, message)
        if self.closing:
            self._flush_closing()

    def _queued_drop_reason(self, req: Request, now: float) -> Optional[tuple]:
        if req.deadline is not None and now >= req.deadline:
            return ("DEADLINE_EXCEEDED", f"deadline expired after {now - req.enqueued_at:.2f}s waiting in the "
                                         f"{req.pool} queue; no worker was free")
        if req.stream is not None and req.stream in self.dead_streams:
            return ("UNAVAILABLE", self.dead_streams[req.stream])
        if now - req.enqueued_at > self.cfg.queue_timeout_s:
            live = self.pools().get(req.pool, {}).get("live", 0)
            return ("UNAVAILABLE", f"no {req.pool} worker could take this request within {self.cfg.queue_timeout_s:.0f}s "
                                   f"({live} live); retry later")
        return None

    # ---------------------------------------------------------------- worker messages
    def _on_backend(self, parts: list, via_dgram: bool = False) -> None:
        if len(parts) < 2:
            self.counters["malformed"] += 1
            return
        # handler threads reply on their own sockets, named '<worker id>/<n>'
        wid = bytes(parts[0]).decode("utf-8", "replace").split("/", 1)[0]
        try:
            command, header, frames = P.decode(parts[1:], P.DGRAM_WORKER_COMMANDS if via_dgram else P.WORKER_COMMANDS)
        except P.ProtocolError as exc:
            self.counters["malformed"] += 1
            log.warning("dropped malformed backend message from %r: %s", wid[:40], exc)
            return
        ws = self.workers.get(wid)
        if ws is None or ws.state == "dead":
            if wid in self.retired:
                self._fence(wid)
                return
            self.counters["malformed"] += 1
            log.warning("message %s from unknown worker %r dropped", command, wid[:40])
            return
        ws.last_seen = time.time()
        if command in (P.PARTIAL, P.FINAL, P.ERROR, P.DONE):
            ws.last_reply = ws.last_seen
            req = ws.inflight.get(str(header.get("id", "")))
            if req is None:
                return  # late reply for a request already answered (e.g. cancelled)
            if command == P.PARTIAL:
                req.last_activity = ws.last_seen
                if not req.internal:
                    self._send_facade(req.facade, P.PARTIAL, parts[3], frames)
                return
            ws.served += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s from %s after %.1f ms", req.id, command.decode(), ws.worker_id,
                          1000 * (time.time() - req.enqueued_at))
            if command == P.ERROR:
                header = P.error_header(req.id, str(header.get("code") or "INTERNAL"),
                                        str(header.get("message") or "worker error"))
                self._finish(req, command, header, frames)
            else:
                self._finish(req, command, header, frames, raw_header=parts[3])
            self._maybe_stop_draining(ws)
            if self.queues.get(ws.pool):
                self._dispatch_queued()
        elif command == P.HEARTBEAT:
            self._absorb_status(ws, header)
        elif command == P.READY:
            self._absorb_status(ws, header)
            if not ws.pid:   # a remote worker: its pid on its node
                ws.pid = int(header.get("pid") or 0)
            ws.capacity = max(1, int(header.get("capacity") or 1))
            dgram = header.get("dgram")
            ws.dgram = (dgram if self.wsend is not None and not ws.remote
                        and dgram == f"{self.run_dir}/w-{ws.worker_id}.dgram" else "")
            if ws.dgram:
                self.dgram_workers[ws.dgram] = ws.worker_id.encode()
            ws.state = "ready"
            ws.ready_at = ws.last_reply = time.time()
            log.info("%s ready (pid %s, capacity %d) in %.2fs", wid, header.get("pid"), ws.capacity,
                     ws.ready_at - ws.started_at)
            self.events.worker_ready(ws)
            self.pools_changed()
            self._dispatch_queued()
        elif command == P.LOADED:
            ws.models_version = max(ws.models_version, int(header.get("version") or 0))
            model = header.get("model") or {}
            mid = str(model.get("model_id") or "")
            if mid:
                ws.models[mid] = model
                self.events.model_loaded(ws, mid, str(header.get("method") or LOAD_MODEL),
                                         bytes(frames[0]) if frames else b"")
        elif command == P.UNLOADED:
            ws.models_version = max(ws.models_version, int(header.get("version") or 0))
            mid = str(header.get("model_id") or "")
            ws.models.pop(mid, None)
            self.events.model_unloaded(ws, mid)
        elif command == P.DISCONNECT:
            ws.state = "draining"

    def _absorb_status(self, ws: WorkerState, header: dict) -> None:
        ws.status = header
        models = header.get("models")
        version = int(header.get("models_version") or 0)
        if isinstance(models, list) and version >= ws.models_version:  # never older than LOADED/UNLOADED seen
            ws.models_version = version
            ws.models = {str(m.get("model_id")): m for m in models if isinstance(m, dict) and m.get("model_id")}
        if header.get("recycle") and ws.state == "ready":
            log.warning("recycling %s: %s", ws.worker_id, header["recycle"])
            ws.state = "draining"
            self.pools_changed()
            self._maybe_stop_draining(ws)

    def _maybe_stop_draining(self, ws: WorkerState) -> None:
        """A draining worker (recycled, or it said DISCONNECT) is told to STOP once it holds nothing."""
        if ws.state == "draining" and not ws.inflight and not ws.stop_sent:
            self.send_stop(ws)

    def _on_internal_reply(self, req: Request, command: bytes, header: dict) -> None:
        if command == P.ERROR:
            log.error("replay of %s failed: %s", req.model, header.get("message"))
        else:
            log.info("replayed load of %s", req.model)

    # ---------------------------------------------------------------- polling (the process manager's loop)
    def on_readable(self, sockets) -> None:
        if self.backend in sockets:
            self._drain(self.backend, self._on_backend)
        if self.frontend in sockets:
            self._drain(self.frontend, self._on_frontend)
        if self.dgram is not None and self.dgram.fileno() in sockets:
            self._drain_datagrams()

    def dgram_fd(self) -> Optional[int]:
        """The facades' datagram socket, for the owner's poller (it reports it as this int)."""
        return self.dgram.fileno() if self.dgram is not None else None

    def _drain_datagrams(self, budget: int = 1000) -> None:
        """Requests and CANCELs from facades that said HELLO, and DONEs from local workers (known by the
        `w-<worker id>.dgram` they named in READY), by datagram; anything else is counted as malformed and
        dropped."""
        for _ in range(budget):
            try:
                data, addr = self.dgram.recvfrom(P.DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("datagram socket: %s", exc)
                return
            if not isinstance(addr, str):
                addr = ""
            if addr in self.dgram_facades:
                handler, identity = self._on_frontend, self.dgram_facades[addr]
            elif addr in self.dgram_workers:
                handler, identity = self._on_backend, self.dgram_workers[addr]
            else:
                self.counters["malformed"] += 1
                log.warning("dropped a datagram from %r: no facade that said HELLO, no worker that said READY",
                            addr[:80])
                continue
            try:
                handler([identity, *P.split_datagram(data)], via_dgram=True)
            except P.ProtocolError as exc:
                self.counters["malformed"] += 1
                log.warning("dropped malformed datagram from %r: %s", addr[:80], exc)
            except Exception:
                self.counters["malformed"] += 1
                log.exception("error while handling a datagram; dropped")

    def _drain(self, sock: zmq.Socket, handler: Callable[[list], None], budget: int = 1000) -> None:
        for _ in range(budget):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handler(parts)
            except Exception:
                self.counters["malformed"] += 1
                log.exception("error while handling a message; dropped")

    def sweep(self) -> None:
        """The 20 ms timer: queued requests that expired, lost their stream or waited too long are answered."""
        if any(self.queues.values()):
            self._dispatch_queued(sweep=True)

    def close(self) -> None:
        self.frontend.close(0)
        self.backend.close(0)
        for sock in (self.dgram, self.wsend):
            if sock is not None:
                sock.close()
        if self.dgram is not None:
            P.unlink_quietly(f"{self.run_dir}/frontend.dgram")
