"""The broker: one owner of every queue, credit and routing decision (DESIGN §2).

Frontend ROUTER (the facade's DEALER) and backend ROUTER (each worker's DEALER), one poll loop.
Requests are routed by pool and device, then by model affinity; a stream stays pinned to the worker
that served its first frame. Each worker announces a capacity and gets at most that many requests at
once; the rest wait in a bounded queue per pool with one sub-queue per caller (client connection),
served round robin (broker/fair_queue.py): a full queue, or a caller beyond its share of it, answers
RESOURCE_EXHAUSTED at once, a request whose deadline passes in the queue answers DEADLINE_EXCEEDED
without reaching a worker. Every request gets exactly one terminal reply (FINAL or ERROR): the facade
relies on it to release shared-memory slots. Worker death is noticed through pidfds, a hang through
missed heartbeats, handlers that are all stuck by the progress watchdog (broker/watchdog.py); the
worker is restarted with capped back-off and the model loads it had acknowledged are replayed.
"""
from __future__ import annotations

import itertools
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import zmq

from broker import protocol as P
from broker.fair_queue import FairQueue
from broker.supervisor import Backoff, Child, Supervisor, describe_exit
from broker.watchdog import stall_reason

log = logging.getLogger("broker")


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


@dataclass
class WorkerSlot:
    """A place in a pool that always holds one worker process (restarted when it dies)."""
    pool: str
    device: str
    index: int
    make_child: Callable[[str], Child]
    backoff: Backoff = field(default_factory=Backoff)
    generation: int = 0
    restarts: int = 0
    replay: dict = field(default_factory=dict)   # model_id -> (method, payload)
    restart_at: Optional[float] = None
    worker: Optional["WorkerState"] = None

    @property
    def key(self) -> str:
        return f"{self.pool}@{self.device}#{self.index}"


@dataclass
class WorkerState:
    worker_id: str
    slot: WorkerSlot
    child: Child
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
    kill_reason: Optional[str] = None   # set when the broker kills it for lack of progress

    def free(self) -> int:
        return self.capacity - len(self.inflight) if self.state == "ready" else 0


@dataclass
class BrokerConfig:
    frontend: str
    backend: str
    queue_limit: int = 256
    caller_queue_limit: int = 0      # queued requests per caller and pool (0 = only the fair share)
    queue_timeout_s: float = 30.0
    stall_timeout_s: float = 300.0   # progress watchdog: longest silence of a request without deadline (0 = off)
    heartbeat_timeout_s: float = 5.0
    startup_timeout_s: float = 300.0
    max_message_bytes: int = 256 * 2**20
    curve_secret: Optional[bytes] = None
    curve_public: Optional[bytes] = None


class Broker:
    def __init__(self, config: BrokerConfig, supervisor: Supervisor):
        self.cfg = config
        self.sup = supervisor
        self.zctx = zmq.Context.instance()
        self.frontend = self._router(config.frontend)
        self.backend = self._router(config.backend, curve=True)
        self.slots: list[WorkerSlot] = []
        self.workers: dict[str, WorkerState] = {}          # worker_id -> state
        self.by_pidfd: dict[int, WorkerState] = {}
        self.queues: dict[str, FairQueue] = {}
        self.requests: dict[str, Request] = {}              # every request not yet answered
        self.streams: dict[str, str] = {}                    # stream id -> worker id
        self.dead_streams: dict[str, str] = {}               # stream id -> reason (worker died)
        self.facades: set = set()
        self.counters = {"malformed": 0, "rejected": {}, "expired": {}, "crashes": 0, "hangs": 0,
                         "stalls": 0, "unroutable_replies": 0}
        self.started = time.time()
        self.snapshot: dict = {}
        self._ids = itertools.count()
        self.stopping = False
        self.on_hello: Optional[Callable[[dict], None]] = None   # the facade announced its port
        self.extra_pidfd_handlers: dict[int, Callable[[int], None]] = {}
        self._last_pools: dict = {}

    def _router(self, endpoint: str, curve: bool = False) -> zmq.Socket:
        s = self.zctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_bytes)
        s.setsockopt(zmq.SNDHWM, 100000)
        s.setsockopt(zmq.RCVHWM, 100000)
        if curve and endpoint.startswith("tcp://"):
            if not self.cfg.curve_secret:
                raise ValueError("a tcp:// worker endpoint requires CurveZMQ keys")
            s.curve_server = True
            s.curve_secretkey = self.cfg.curve_secret
            s.curve_publickey = self.cfg.curve_public
        s.bind(endpoint)
        return s

    # ---------------------------------------------------------------- pools and workers
    def add_slot(self, pool: str, device: str, make_child: Callable[[str], Child]) -> WorkerSlot:
        slot = WorkerSlot(pool, device, sum(1 for s in self.slots if s.pool == pool and s.device == device),
                          make_child)
        self.slots.append(slot)
        self.queues.setdefault(pool, FairQueue(pool, self.cfg.queue_limit, self.cfg.caller_queue_limit))
        self.counters["rejected"].setdefault(pool, 0)
        self.counters["expired"].setdefault(pool, 0)
        self._start(slot)
        return slot

    def _start(self, slot: WorkerSlot) -> None:
        slot.generation += 1
        slot.restart_at = None
        worker_id = f"{slot.key}.{slot.generation}"
        child = self.sup.spawn(slot.make_child(worker_id))
        ws = WorkerState(worker_id=worker_id, slot=slot, child=child)
        slot.worker = ws
        self.workers[worker_id] = ws
        self.by_pidfd[child.pidfd] = ws
        log.info("started %s pid=%d", worker_id, child.pid)

    def pools(self) -> dict:
        out: dict = {}
        for slot in self.slots:
            p = out.setdefault(slot.pool, {"live": 0, "configured": 0, "devices": {}})
            p["configured"] += 1
            live = slot.worker is not None and slot.worker.state in ("ready", "draining")
            p["live"] += int(live)
            d = p["devices"].setdefault(slot.device, 0)
            p["devices"][slot.device] = d + int(live)
        return out

    def _pools_changed(self) -> None:
        pools = self.pools()
        if pools == self._last_pools:
            return
        self._last_pools = pools
        for facade in list(self.facades):
            self._send_facade(facade, P.POOLS, {"pools": pools})

    # ---------------------------------------------------------------- sending
    def _send_facade(self, facade: bytes, command: bytes, header, frames=()) -> None:
        try:
            self.frontend.send_multipart([facade, *P.encode(command, header, frames)], copy=False)
        except zmq.ZMQError as exc:  # facade gone (EHOSTUNREACH under ROUTER_MANDATORY)
            self.counters["unroutable_replies"] += 1
            log.debug("reply to vanished facade dropped: %s", exc)

    def _send_worker(self, ws: WorkerState, command: bytes, header: dict, frames=()) -> bool:
        try:
            self.backend.send_multipart([ws.worker_id.encode(), *P.encode(command, header, frames)], copy=False)
            return True
        except zmq.ZMQError as exc:
            log.warning("cannot reach %s: %s", ws.worker_id, exc)
            return False

    def _finish(self, req: Request, command: bytes, header: dict, frames=(), raw_header: Optional[bytes] = None) -> None:
        """Send the terminal reply of a request (exactly once) and forget it."""
        if self.requests.pop(req.id, None) is None:
            return
        if req.worker_id:
            ws = self.workers.get(req.worker_id)
            if ws is not None:
                ws.inflight.pop(req.id, None)
        if req.internal:
            self._on_internal_reply(req, command, header)
            return
        self._send_facade(req.facade, command, raw_header or header, frames)

    def _error(self, req: Request, code: str, message: str) -> None:
        self._finish(req, P.ERROR, P.error_header(req.id, code, message))

    # ---------------------------------------------------------------- facade messages
    def _on_frontend(self, parts: list) -> None:
        if len(parts) < 2:
            self.counters["malformed"] += 1
            return
        facade = bytes(parts[0])
        try:
            command, header, frames = P.decode(parts[1:], P.FACADE_COMMANDS)
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
            if self.on_hello is not None:
                self.on_hello(header)
            self._send_facade(facade, P.POOLS, {"pools": self.pools()})

    def _on_request(self, facade: bytes, header: dict, frames: list, raw_header: Optional[bytes] = None) -> None:
        rid = header.get("id")
        method = header.get("method")
        if not isinstance(rid, str) or not isinstance(method, str) or not rid:
            self.counters["malformed"] += 1
            return
        if rid in self.requests:
            self._send_facade(facade, P.ERROR, P.error_header(rid, "ALREADY_EXISTS", f"request id {rid} is in use"))
            return
        if method == P.BROKER_QUERY_MODELS:
            self._send_facade(facade, P.FINAL, {"id": rid, "msgpack": True}, [P.pack_header(self.models_view())])
            return
        if method == P.BROKER_QUERY_STATS:
            self._send_facade(facade, P.FINAL, {"id": rid, "msgpack": True}, [P.pack_header(self.stats_view())])
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
        if pool not in self.queues:
            configured = ", ".join(sorted(self.queues)) or "none"
            self._error(req, "UNIMPLEMENTED", f"pool '{pool}' is not running in this service (pools: {configured}); "
                                               f"start run.py with --pools including it")
            return
        if req.device and not any(s.pool == pool and s.device == req.device for s in self.slots):
            devices = sorted({s.device for s in self.slots if s.pool == pool})
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
            return
        if req.worker_id is None:
            try:
                self.queues[req.pool].remove(req)
            except (KeyError, ValueError):
                pass
            self._error(req, "CANCELLED", "cancelled by the client before it reached a worker")
            return
        ws = self.workers.get(req.worker_id)
        if ws is not None:
            self._send_worker(ws, P.CANCEL, {"id": rid})

    def _on_stream_close(self, stream: str) -> None:
        self.dead_streams.pop(stream, None)
        wid = self.streams.pop(stream, None)
        ws = self.workers.get(wid) if wid else None
        if ws is not None and ws.state != "dead":
            self._send_worker(ws, P.STREAM_CLOSE, {"stream": stream})

    def forget_facade(self, facade: bytes) -> int:
        """A facade died: its callers are gone, so drop its queued requests and cancel its in-flight ones
        (workers stop early; their late replies are dropped). Returns how many requests it had."""
        self.facades.discard(facade)
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
                    self._send_worker(ws, P.CANCEL, {"id": req.id})
        return len(mine)

    # ---------------------------------------------------------------- routing
    def _candidates(self, req: Request) -> list:
        if req.stream is not None and req.stream in self.streams:
            ws = self.workers.get(self.streams[req.stream])
            return [ws] if ws is not None else []
        out = []
        for slot in self.slots:
            ws = slot.worker
            if ws is None or slot.pool != req.pool or ws.state != "ready":
                continue
            if req.device and slot.device != req.device:
                continue
            out.append(ws)
        return out

    def _pick(self, req: Request) -> Optional[WorkerState]:
        cands = self._candidates(req)
        if not cands:
            return None
        if req.model:
            with_model = [w for w in cands if req.model in w.models]
            if with_model:
                cands = with_model
            elif any(req.model in w.models for w in self.workers.values()
                     if w.slot.pool == req.pool and w.state in ("starting", "ready", "draining")
                     and (not req.device or w.slot.device == req.device)):
                return None  # wait for the worker that has the model rather than loading it twice
        free = [w for w in cands if w.free() > 0]
        if not free:
            return None
        return min(free, key=lambda w: (len(w.inflight) / max(1, w.capacity), w.slot.index))

    def _try_dispatch(self, req: Request) -> bool:
        ws = self._pick(req)
        if ws is None:
            return False
        req.worker_id = ws.worker_id
        req.last_activity = time.time()
        ws.inflight[req.id] = req
        if req.stream is not None:
            self.streams.setdefault(req.stream, ws.worker_id)
        if not self._send_worker(ws, P.REQUEST, req.raw_header or req.header, req.frames):
            ws.inflight.pop(req.id, None)
            req.worker_id = None
            return False
        req.frames = []  # the bytes now belong to the worker's socket
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dispatched %s %s (model=%r stream=%s) to %s", req.id, req.header.get("method"), req.model,
                      req.stream, ws.worker_id)
        return True

    def _has_credit(self, pool: str) -> bool:
        return any(slot.worker is not None and slot.pool == pool and slot.worker.free() > 0 for slot in self.slots)

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
    def _on_backend(self, parts: list) -> None:
        if len(parts) < 2:
            self.counters["malformed"] += 1
            return
        # handler threads reply on their own sockets, named '<worker id>/<n>'
        wid = bytes(parts[0]).decode("utf-8", "replace").split("/", 1)[0]
        try:
            command, header, frames = P.decode(parts[1:], P.WORKER_COMMANDS)
        except P.ProtocolError as exc:
            self.counters["malformed"] += 1
            log.warning("dropped malformed backend message from %r: %s", wid[:40], exc)
            return
        ws = self.workers.get(wid)
        if ws is None or ws.state == "dead":
            self.counters["malformed"] += 1
            log.warning("message %s from unknown worker %r dropped", command, wid[:40])
            return
        ws.last_seen = time.time()
        if command in (P.PARTIAL, P.FINAL, P.ERROR):
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
            if self.queues.get(ws.slot.pool):
                self._dispatch_queued()
        elif command == P.HEARTBEAT:
            self._absorb_status(ws, header)
        elif command == P.READY:
            self._absorb_status(ws, header)
            ws.capacity = max(1, int(header.get("capacity") or 1))
            ws.state = "ready"
            ws.ready_at = ws.last_reply = time.time()
            log.info("%s ready (pid %s, capacity %d) in %.2fs", wid, header.get("pid"), ws.capacity,
                     ws.ready_at - ws.child.started_at)
            self._replay(ws)
            self._pools_changed()
            self._dispatch_queued()
        elif command == P.LOADED:
            ws.models_version = max(ws.models_version, int(header.get("version") or 0))
            model = header.get("model") or {}
            mid = str(model.get("model_id") or "")
            if mid:
                ws.models[mid] = model
                ws.slot.replay[mid] = (str(header.get("method") or "ml.ModelManagementService/LoadModel"),
                                       bytes(frames[0]) if frames else b"")
        elif command == P.UNLOADED:
            ws.models_version = max(ws.models_version, int(header.get("version") or 0))
            mid = str(header.get("model_id") or "")
            ws.models.pop(mid, None)
            ws.slot.replay.pop(mid, None)
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
            self._pools_changed()
            self._maybe_stop_draining(ws)

    def _maybe_stop_draining(self, ws: WorkerState) -> None:
        if ws.state == "draining" and not ws.inflight and not ws.stop_sent:
            ws.stop_sent = True
            self._send_worker(ws, P.STOP, {})

    def _replay(self, ws: WorkerState) -> None:
        for mid, (method, payload) in list(ws.slot.replay.items()):
            rid = f"replay-{next(self._ids)}"
            req = Request(id=rid, facade=b"", header={"id": rid, "method": method, "pool": ws.slot.pool,
                                                       "device": ws.slot.device, "model": mid, "replay": True},
                          frames=[payload], pool=ws.slot.pool, device=ws.slot.device, model=mid, stream=None,
                          deadline=None, enqueued_at=time.time(), internal=True, worker_id=ws.worker_id,
                          last_activity=time.time())
            self.requests[rid] = req
            ws.inflight[rid] = req
            log.info("replaying load of %s on %s", mid, ws.worker_id)
            self._send_worker(ws, P.REQUEST, req.header, req.frames)

    def _on_internal_reply(self, req: Request, command: bytes, header: dict) -> None:
        if command == P.ERROR:
            log.error("replay of %s failed: %s", req.model, header.get("message"))
        else:
            log.info("replayed load of %s", req.model)

    # ---------------------------------------------------------------- liveness
    def on_worker_exit(self, ws: WorkerState) -> None:
        child = ws.child
        reason = describe_exit(child.exit_code)
        expected = ws.stop_sent or self.stopping
        if not expected and ws.kill_reason is None:
            self.counters["crashes"] += 1
            log.error("%s (pid %d) died: %s; %d in-flight requests fail", ws.worker_id, child.pid, reason, len(ws.inflight))
        ws.state = "dead"
        self.workers.pop(ws.worker_id, None)
        for req in list(ws.inflight.values()):
            if ws.kill_reason is not None and not expected:
                message = (f"the {ws.slot.pool} worker on {ws.slot.device} (pid {child.pid}) was killed: "
                           f"{ws.kill_reason}; it is being restarted, retry the request")
            else:
                message = (f"the {ws.slot.pool} worker on {ws.slot.device} (pid {child.pid}) "
                           f"{'stopped' if expected else 'crashed'} while processing this request ({reason}); "
                           f"it is being restarted, retry the request")
            self._error(req, "UNAVAILABLE", message)
        ws.inflight.clear()
        for stream, wid in list(self.streams.items()):
            if wid == ws.worker_id:
                del self.streams[stream]
                self.dead_streams[stream] = (f"the {ws.slot.pool} worker serving this stream (pid {child.pid}) died "
                                             f"({reason}); its tracking state is lost: open a new stream")
        slot = ws.slot
        slot.worker = None
        if self.stopping:
            self._pools_changed()
            return
        lived = time.time() - child.started_at
        delay = 0.0 if expected else slot.backoff.next_delay(lived)
        slot.restarts += 1
        slot.restart_at = time.time() + delay
        log.info("restarting %s in %.2fs (restart #%d)", slot.key, delay, slot.restarts)
        self._pools_changed()

    def _check_timers(self) -> None:
        now = time.time()
        for slot in self.slots:
            if slot.worker is None and slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                self._start(slot)
            ws = slot.worker
            if ws is None or ws.state == "dead" or ws.kill_reason is not None:
                continue
            if ws.state == "starting":
                if now - ws.child.started_at > self.cfg.startup_timeout_s:
                    log.error("%s did not become ready in %.0fs; killing it", ws.worker_id, self.cfg.startup_timeout_s)
                    self.sup.kill(ws.child)
            elif now - ws.last_seen > self.cfg.heartbeat_timeout_s:
                self.counters["hangs"] += 1
                log.error("%s (pid %d) missed heartbeats for %.1fs: killing it as hung", ws.worker_id,
                          ws.child.pid, now - ws.last_seen)
                ws.last_seen = now  # do not re-kill every tick
                self.sup.kill(ws.child, signal.SIGKILL)
            else:
                self._check_progress(ws, now)

    def _check_progress(self, ws: WorkerState, now: float) -> None:
        """Progress watchdog (broker/watchdog.py): kill a worker whose credits are all held by stuck requests."""
        grace = max(5.0, self.cfg.heartbeat_timeout_s)
        reason = stall_reason(ws, now, grace, self.cfg.stall_timeout_s)
        if reason is None:
            return
        ws.kill_reason = reason
        self.counters["hangs"] += 1
        self.counters["stalls"] += 1
        log.error("%s (pid %d): killing it as stuck (its heartbeat goes on, its handlers do not)", reason, ws.child.pid)
        self.sup.kill(ws.child, signal.SIGKILL)

    # ---------------------------------------------------------------- views
    def models_view(self) -> dict:
        out = []
        for ws in self.workers.values():
            if ws.state == "dead":
                continue
            for m in ws.models.values():
                out.append({**m, "pool": ws.slot.pool, "device": ws.slot.device, "worker_id": ws.worker_id})
        return {"models": out}

    def stats_view(self) -> dict:
        now = time.time()
        workers = []
        for slot in self.slots:
            ws = slot.worker
            st = ws.status if ws else {}
            mem = st.get("memory") or {}
            workers.append({
                "worker_id": ws.worker_id if ws else f"{slot.key}.restarting",
                "pid": ws.child.pid if ws else 0, "pool": slot.pool, "device": slot.device,
                "state": ws.state if ws else "restarting", "capacity": ws.capacity if ws else 0,
                "inflight": len(ws.inflight) if ws else 0,
                "queue_depth": len(self.queues.get(slot.pool, ())),
                "restarts": slot.restarts, "uptime_s": (now - ws.child.started_at) if ws else 0.0,
                "requests_served": ws.served if ws else 0,
                "rss_mb": mem.get("rss_mb", 0.0), "uss_mb": mem.get("uss_mb", 0.0), "pss_mb": mem.get("pss_mb", 0.0),
                "cuda_allocated_mb": mem.get("cuda_allocated_mb", 0.0),
                "cuda_reserved_mb": mem.get("cuda_reserved_mb", 0.0),
                "models": list(ws.models.values()) if ws else [],
            })
        pools = []
        summary = self.pools()
        for pool, info in summary.items():
            for device, live in info["devices"].items():
                pools.append({"pool": pool, "device": device, "live_workers": live,
                              "queue_depth": len(self.queues.get(pool, ())), "queue_limit": self.cfg.queue_limit,
                              "rejected": self.counters["rejected"].get(pool, 0),
                              "expired": self.counters["expired"].get(pool, 0)})
        return {"workers": workers, "pools": pools, "uptime_s": now - self.started,
                "malformed_frames": self.counters["malformed"], "crashes": self.counters["crashes"],
                "hangs": self.counters["hangs"], "stalls": self.counters["stalls"],
                "callers": {pool: q.callers() for pool, q in self.queues.items()}}

    # ---------------------------------------------------------------- loop
    def _poller(self) -> zmq.Poller:
        fds = tuple(self.by_pidfd.keys()) + tuple(self.extra_pidfd_handlers.keys())
        if getattr(self, "_poller_fds", None) != fds:
            poller = zmq.Poller()
            poller.register(self.backend, zmq.POLLIN)
            poller.register(self.frontend, zmq.POLLIN)
            for fd in fds:
                poller.register(fd, zmq.POLLIN)
            self._poller_obj, self._poller_fds = poller, fds
        return self._poller_obj

    def poll_once(self, timeout_ms: int = 50) -> None:
        events = dict(self._poller().poll(timeout_ms))
        if self.backend in events:
            self._drain(self.backend, self._on_backend)
        if self.frontend in events:
            self._drain(self.frontend, self._on_frontend)
        if len(events) > (self.backend in events) + (self.frontend in events):
            for fd in list(events):
                if isinstance(fd, int):
                    if fd in self.by_pidfd:
                        ws = self.by_pidfd.pop(fd)
                        self.sup.reap(fd)
                        self.on_worker_exit(ws)
                    elif fd in self.extra_pidfd_handlers:
                        self.extra_pidfd_handlers.pop(fd)(fd)
        now = time.time()
        if now - getattr(self, "_last_timers", 0.0) >= 0.02:
            self._last_timers = now
            self._check_timers()
            if any(self.queues.values()):
                self._dispatch_queued(sweep=True)
        if now - getattr(self, "_last_snapshot", 0.0) >= 0.5:
            self._last_snapshot = now
            self.snapshot = self.stats_view()

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

    def busy(self) -> bool:
        return bool(self.requests)

    def stop_workers(self, timeout_s: float) -> None:
        """Graceful: STOP every worker, wait for them to exit, then kill what is left."""
        self.stopping = True
        for ws in list(self.workers.values()):
            ws.stop_sent = True
            self._send_worker(ws, P.STOP, {})
        end = time.time() + timeout_s
        while self.by_pidfd and time.time() < end:
            self.poll_once(50)
        for ws in list(self.by_pidfd.values()):
            self.sup.kill(ws.child)
        end = time.time() + 5
        while self.by_pidfd and time.time() < end:
            self.poll_once(50)

    def close(self) -> None:
        self.frontend.close(0)
        self.backend.close(0)
