"""Worker process base: connect, READY, heartbeat thread, handler dispatch, stats, graceful stop.

The DEALER socket is read by leader/followers (serve(), _follow, _lead): capacity + 1 threads take turns
holding it; the holder reads and dispatches, and when a request outside any stream comes while another
thread waits for the turn, it passes the turn on and runs the request itself (no hand-off to another
thread on a request's way in). Stream frames, and requests that find no thread waiting, run on a thread
pool sized by the worker's capacity. Handler threads reply on their own sockets; heartbeats go through a
queue plus a wake-up pipe to whichever thread holds the socket, which always polls while handlers run.
A long model load therefore never delays a heartbeat.
Requests outside any stream, and their CANCELs, may also come as unix datagrams on `w-<worker id>.dgram`
in the run folder (named in READY; the leader polls it beside the DEALER; PML_DGRAM_HOPS=0 turns it off);
a CANCEL that comes before its REQUEST is remembered for a while and applied when the REQUEST comes.
See docs/ARCHITECTURE.md for the handler API.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Optional

import zmq

from common import wire as P
from common import logs, payload, proc
from common.recent import Recent
from shm.pool import SlotReader
from workers.context import Cancelled, RequestContext, WorkerError

ECHO_METHOD = "pythonml.v1.Diagnostics/Echo"
# ids of ended streams remembered to refuse a late frame (uuids, never reused; a late frame trails its
# stream's close by one hop, so a few thousand is plenty): about 0.2 KB each
CLOSED_STREAMS_KEPT = 4096
FAULT_INJECTION_ENV = "PML_FAULT_INJECTION"
DIRECT_SENDERS_KEPT = 4   # direct-reply sockets per handler thread (one per facade endpoint seen lately)
EARLY_CANCELS_KEPT = 1024   # CANCELs of requests not seen (yet): one that overtook its REQUEST is applied


@dataclass
class ModelRecord:
    model_id: str
    pipeline_type: str = ""
    ram_mb: float = 0.0
    vram_mb: float = 0.0
    loaded_at: int = field(default_factory=lambda: int(time.time()))
    load_payload: bytes = b""   # serialized LoadModelRequest that reproduces this load (replay)
    load_method: str = "ml.ModelManagementService/LoadModel"
    runtime: Any = field(default=None, repr=False, compare=False)   # the family's loaded object (never sent)

    def summary(self) -> dict:
        """What the broker is told (LOADED, heartbeats): every field but the replay payload and the runtime."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("load_payload", "runtime")}


class ModelRegistry:
    """The one registry of a worker's loaded models: a ModelRecord per model id (its `runtime` carries what the
    family loaded) and a version bumped on every change. Every change is announced through on_loaded /
    on_unloaded (the worker tells the broker, with the version: a heartbeat built before an unload but
    delivered after it then cannot resurrect the model)."""

    def __init__(self, on_loaded: Optional[Callable[[ModelRecord, int], None]] = None,
                 on_unloaded: Optional[Callable[[str, int], None]] = None):
        self._lock = threading.Lock()
        self._records: dict[str, ModelRecord] = {}
        self.version = 0
        self._on_loaded = on_loaded or (lambda record, version: None)
        self._on_unloaded = on_unloaded or (lambda model_id, version: None)

    def add(self, record: ModelRecord) -> None:
        with self._lock:
            self._records[record.model_id] = record
            self.version += 1
            version = self.version
        self._on_loaded(record, version)

    def remove(self, model_id: str) -> Optional[ModelRecord]:
        """Take the model out (requests no longer find it) and announce it; None if it was not loaded."""
        with self._lock:
            record = self._records.pop(model_id, None)
            if record is None:
                return None
            self.version += 1
            version = self.version
        self._on_unloaded(model_id, version)
        return record

    def get(self, model_id: str) -> Optional[ModelRecord]:
        with self._lock:
            return self._records.get(model_id)

    def records(self) -> list[ModelRecord]:
        with self._lock:
            return list(self._records.values())

    def snapshot(self) -> dict:
        with self._lock:
            return {"models": [m.summary() for m in self._records.values()], "models_version": self.version}

    def __getitem__(self, model_id: str) -> ModelRecord:
        with self._lock:
            return self._records[model_id]

    def __contains__(self, model_id: object) -> bool:
        with self._lock:
            return model_id in self._records

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._records))

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class Worker:
    pool = "base"
    capacity = 1

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = args.device
        self.worker_id = args.worker_id
        self.options: dict = json.loads(args.options_json or "{}")
        self.log = logging.getLogger(f"{self.pool}@{self.device}")
        # the loaded models; its version travels with every LOADED / UNLOADED and heartbeat (replies and
        # heartbeats travel on different sockets: a stale heartbeat must not resurrect a model)
        self.models = ModelRegistry(on_loaded=self._announce_loaded, on_unloaded=self._announce_unloaded)
        self.started = time.time()
        self.requests_served = 0
        self._outq: "queue.Queue[list]" = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._inflight: dict[str, RequestContext] = {}
        self._inflight_lock = threading.Lock()
        self._streams: dict[str, dict] = {}
        # frames of one stream run strictly in order, one at a time, even when the facade pipelines them
        self._stream_queues: dict[str, deque] = {}
        # a stream closed while one of its frames runs: its state is closed after that frame, not under it
        self._close_after: dict[str, dict] = {}
        # recently closed streams: a late frame for one is refused instead of opening state nobody closes
        self._closed_streams = Recent(CLOSED_STREAMS_KEPT)
        self._stream_lock = threading.Lock()
        self._stopping = threading.Event()
        self._recycle_reason: Optional[str] = None
        self.shm: Optional[SlotReader] = None
        if args.shm_fd >= 0:
            self.shm = SlotReader(args.shm_fd, args.shm_slots, args.shm_slot_size)
        self._handlers: dict[str, Callable] = {}
        self._tls = threading.local()
        self._thread_socks: list = []
        self._thread_socks_lock = threading.Lock()
        # serve(): the threads that take turns reading the broker's socket (leader/followers)
        self._lead_lock = threading.Lock()
        self._followers = 0
        self._followers_lock = threading.Lock()
        self._malformed = 0
        self._io: Optional[tuple] = None
        # direct replies go only to ipc sockets in the folder of the broker's own socket (the run folder)
        connect = str(getattr(args, "connect", ""))
        self._reply_dir = (os.path.dirname(connect) + "/reply-") if connect.startswith("ipc://") else ""
        # datagram hops: the broker sends requests outside streams to this socket (bound in serve())
        # and DONE goes from it to the broker's datagram socket, which knows this worker by that address
        self._dgram: Optional[socket.socket] = None
        self._dgram_path = ""
        self._broker_dgram = ""
        if (connect.startswith("ipc://") and "/" not in self.worker_id
                and P.dgram_hops_on()):
            run_dir = os.path.dirname(connect[len("ipc://"):])
            self._dgram_path = f"{run_dir}/w-{self.worker_id}.dgram"
            self._broker_dgram = f"{run_dir}/frontend.dgram"
        self._early_cancels = Recent(EARLY_CANCELS_KEPT)

    # ---- to override -------------------------------------------------------------------------
    def setup(self) -> None:
        """Heavy imports and warm-up, once, before READY."""

    def handlers(self) -> dict:
        return {}

    def on_stream_close(self, stream_id: str, state: dict) -> None:
        """Hook after a stream's state values have been closed."""

    def on_idle(self) -> None:
        """Hook from the heartbeat thread, at most once per heartbeat: nothing is in flight and requests
        were served since the last call (e.g. hand freed memory back to the system)."""

    # ---- helpers for subclasses --------------------------------------------------------------
    def note_loaded(self, record: ModelRecord) -> None:
        self.models.add(record)

    def note_unloaded(self, model_id: str) -> None:
        self.models.remove(model_id)

    def _announce_loaded(self, record: ModelRecord, version: int) -> None:
        self._send(P.LOADED, {"model": record.summary(), "method": record.load_method, "version": version},
                   [record.load_payload])
        self._sent_ahead()

    def _announce_unloaded(self, model_id: str, version: int) -> None:
        self._send(P.UNLOADED, {"model_id": model_id, "version": version})
        self._sent_ahead()

    def _sent_ahead(self) -> None:
        """A LOADED / UNLOADED left on the socket of the request this thread runs: its terminal reply follows
        it through the broker, which has then applied the change before the caller hears of it (a
        GetLoadedModels right after a LoadModel lists the model)."""
        ahead = getattr(self._tls, "ahead", None)
        if ahead is not None:
            ahead.append(True)

    def request_recycle(self, reason: str) -> None:
        """Ask the supervisor to replace this process between requests (e.g. to give memory back)."""
        self._recycle_reason = reason

    def measure_memory(self) -> dict:
        out = {"rss_mb": 0.0, "uss_mb": 0.0, "pss_mb": 0.0,
               "cuda_allocated_mb": 0.0, "cuda_reserved_mb": 0.0}
        try:
            import psutil
            mi = psutil.Process().memory_full_info()
            out["rss_mb"] = mi.rss / 2**20
            out["uss_mb"] = getattr(mi, "uss", 0) / 2**20
            out["pss_mb"] = getattr(mi, "pss", 0) / 2**20
        except Exception:  # pragma: no cover - psutil missing fields on exotic kernels
            pass
        torch = sys.modules.get("torch")
        if torch is not None and self.device.startswith("cuda"):
            try:
                if torch.cuda.is_initialized():
                    out["cuda_allocated_mb"] = torch.cuda.memory_allocated(self.device) / 2**20
                    out["cuda_reserved_mb"] = torch.cuda.memory_reserved(self.device) / 2**20
            except Exception:
                pass
        return out

    # ---- plumbing ----------------------------------------------------------------------------
    def _send(self, command: bytes, header: dict, frames=()) -> None:
        own = getattr(self._tls, "own", None)
        if own is not None:
            # a handler thread replies on its own socket: no hand-off to (and wake-up of) the I/O thread
            self._send_on(own, command, header, frames)
            return
        self._outq.put(P.encode(command, header, frames))
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _socket(self, identity: str) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.args.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 100000)
        if self.args.curve_server_key:
            sock.curve_serverkey = self.args.curve_server_key.encode()
            sock.curve_publickey = os.environ["PML_CURVE_PUBLIC"].encode()
            sock.curve_secretkey = os.environ["PML_CURVE_SECRET"].encode()
        sock.connect(self.args.connect)
        return sock

    def _init_handler_thread(self) -> None:
        """Each handler thread gets a reply-only socket named '<worker id>/<n>' (the broker maps it back)."""
        with self._thread_socks_lock:
            n = len(self._thread_socks)
            sock = self._socket(f"{self.worker_id}/{n}")
            self._thread_socks.append(sock)
        self._tls.own = (sock, threading.Lock())

    def _reply(self, ctx: RequestContext, ahead: list, command: bytes, header: dict, frames=()) -> None:
        """A request's terminal reply. When nothing went ahead of it (no partial, no LOADED / UNLOADED), from
        a handler thread, to a facade that named its direct-reply socket: straight to the facade, then DONE
        to the broker (which frees the credit and forgets the request without forwarding anything).
        Otherwise, or when the facade cannot take it now, through the broker, behind what went ahead."""
        if not ahead and self._datagram_sent(ctx.header.get("reply_dgram"), P.encode(command, header, frames)):
            self._done(ctx.request_id)
            return
        sender = None if ahead else self._direct_sender(ctx.header.get("reply"))
        if sender is not None:
            try:
                sender.send_multipart(P.encode(command, header, frames), flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:   # the facade is gone or not connected (yet): the broker's path
                pass
            else:
                self._done(ctx.request_id)
                return
        self._send(command, header, frames)

    def _done(self, request_id: str) -> None:
        """DONE to the broker after a direct reply: a datagram from this worker's bound `w-<id>.dgram` (the
        address the broker knows it by) when it can go now, else on ZeroMQ. Either way the broker frees the
        credit; a DONE needs no order with anything else this worker sends (its threads' sockets have none)."""
        header = {"id": request_id}
        if self._dgram is not None and P.send_datagram(self._dgram, self._broker_dgram, P.encode(P.DONE, header)):
            return
        self._send(P.DONE, header)

    def _datagram_sent(self, path, parts: list) -> bool:
        """Send a terminal reply as one unix datagram to the facade's `reply_dgram` socket (in the run
        folder, like `reply`): one system call here and one in the facade, no ZeroMQ I/O thread on either
        side. False (nothing sent) when the request names none, the thread has no own socket, the reply
        is over wire.DATAGRAM_MAX, or the facade's socket cannot take it now (gone, or its queue full):
        the reply then takes ZeroMQ."""
        if not isinstance(path, str) or getattr(self._tls, "own", None) is None or not self._reply_dir:
            return False
        folder = self._reply_dir[len("ipc://"):]
        if not path.startswith(folder) or "/" in path[len(folder):]:
            return False
        sock = getattr(self._tls, "dgram", None)
        if sock is None:
            sock = self._tls.dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
        return P.send_datagram(sock, path, parts)

    def _direct_sender(self, endpoint) -> Optional[zmq.Socket]:
        """This handler thread's PUSH socket to a facade's direct-reply endpoint; None when the request
        names none, the thread has no own socket, or the endpoint is not an ipc socket in the folder of
        the broker's (remote workers, a header naming anything else)."""
        if not isinstance(endpoint, str) or getattr(self._tls, "own", None) is None or not self._reply_dir:
            return None
        senders = getattr(self._tls, "direct", None)
        if senders is None:
            senders = self._tls.direct = OrderedDict()
        sock = senders.get(endpoint)
        if sock is not None:
            senders.move_to_end(endpoint)
            return sock
        if not endpoint.startswith(self._reply_dir) or "/" in endpoint[len(self._reply_dir):]:
            return None
        sock = zmq.Context.instance().socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)       # queue only to a connected facade: else EAGAIN, the broker's path
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.connect(endpoint)
        senders[endpoint] = sock
        while len(senders) > DIRECT_SENDERS_KEPT:  # facades restarted: drop the oldest endpoints
            senders.popitem(last=False)[1].close(0)
        return sock

    @staticmethod
    def _send_on(own: tuple, command: bytes, header: dict, frames=()) -> None:
        sock, lock = own
        with lock:  # a handler may stream partials from a helper thread: one sender at a time
            sock.send_multipart(P.encode(command, header, frames), copy=False)

    def _status(self) -> dict:
        with self._inflight_lock:
            inflight = len(self._inflight)
        return {"worker_id": self.worker_id, "pool": self.pool, "device": self.device,
                "pid": os.getpid(), "capacity": self.capacity, "inflight": inflight,
                "requests_served": self.requests_served, "uptime_s": time.time() - self.started,
                **self.models.snapshot(),
                "memory": self.measure_memory(), "recycle": self._recycle_reason,
                # where it runs: the Ray node id for a worker placed on Ray (broker/ray_host.py), else this host
                "node": os.environ.get("PML_NODE") or socket.gethostname(), "node_ip": os.environ.get("PML_NODE_IP", "")}

    def _heartbeat_loop(self) -> None:
        interval = self.args.heartbeat_interval
        max_rss = float(self.options.get("max_rss_mb") or 0)
        idle_mark = -1
        while not self._stopping.wait(interval):
            status = self._status()
            if status["inflight"] == 0 and self.requests_served != idle_mark:
                idle_mark = self.requests_served
                try:
                    self.on_idle()
                except Exception:
                    self.log.exception("on_idle failed")
            if max_rss and status["memory"]["rss_mb"] > max_rss and not self._recycle_reason:
                self._recycle_reason = (f"rss {status['memory']['rss_mb']:.0f} MB above the "
                                        f"{max_rss:.0f} MB cap")
                status["recycle"] = self._recycle_reason
            self._send(P.HEARTBEAT, status)

    def _frame_view_for(self, header: dict, frames: list) -> Callable[[], Optional[memoryview]]:
        return lambda: payload.side_view(header, frames, self.shm)

    def _run_request(self, ctx: RequestContext, fn: Callable) -> None:
        rid = ctx.request_id
        own = getattr(self._tls, "own", None)
        # non-empty once a partial or a LOADED / UNLOADED (_sent_ahead) left: the terminal reply then follows
        # it through the broker
        ahead = self._tls.ahead = []
        if own is not None:
            # partials leave on the same socket as the final reply, from whichever thread sends them,
            # so they can never overtake it
            def send_partial(data, rid=rid, own=own):
                ahead.append(True)
                self._send_on(own, P.PARTIAL, {"id": rid}, [data])
            ctx._send_partial = send_partial
        try:
            ctx.check_cancelled()
            result = fn(ctx)
            if ctx.cancelled.is_set():
                raise Cancelled()
            self._reply(ctx, ahead, P.FINAL, {"id": rid}, [result] if result is not None else [])
        except WorkerError as exc:
            self._reply(ctx, ahead, P.ERROR, P.error_header(rid, exc.code, exc.message))
        except Exception as exc:  # a bug or a library error: INTERNAL, the worker stays up
            self.log.error("handler %s failed: %s", ctx.method, traceback.format_exc())
            self._reply(ctx, ahead, P.ERROR, P.error_header(rid, "INTERNAL", f"{ctx.method} failed in the {self.pool} worker: {type(exc).__name__}: {exc}"))
        finally:
            self._tls.ahead = None
            with self._inflight_lock:
                self._inflight.pop(rid, None)
            self.requests_served += 1
            max_requests = int(self.options.get("max_requests") or 0)
            if max_requests and self.requests_served >= max_requests and not self._recycle_reason:
                self.request_recycle(f"served {self.requests_served} requests (cap {max_requests})")
                self._send(P.HEARTBEAT, self._status())

    def _run_stream(self, stream: str, executor: Optional[ThreadPoolExecutor] = None) -> None:
        """Run the queued frames of one stream in arrival order on this thread; if the stream was closed
        meanwhile, close its state here, after its last frame (never under a running frame).

        A handler with a `prepare(ctx)` stage (e.g. a video frame's decode) has it run one frame ahead:
        frame k's prepare is finished before frame k runs, and frame k+1's, when it is already queued,
        starts on another handler thread while frame k runs (prepares stay in order, one at a time). Its
        result (or error) reaches the handler as `ctx.prepared`, a finished Future."""
        while True:
            with self._stream_lock:
                q = self._stream_queues.get(stream)
                if not q:
                    self._stream_queues.pop(stream, None)
                    return
                ctx, fn = q[0]
            prepare = getattr(fn, "prepare", None)
            if prepare is not None:
                self._prepare_now(ctx, prepare)
                with self._stream_lock:
                    self._prepare_ahead(q, executor)
            self._run_request(ctx, fn)
            with self._stream_lock:
                q.popleft()
                if q:
                    continue
                self._stream_queues.pop(stream, None)
                closing = self._close_after.pop(stream, None)
            if closing is not None:
                self._close_stream(stream, closing)
            return

    @staticmethod
    def _prepare_ahead(q: deque, executor: Optional[ThreadPoolExecutor]) -> None:
        """Under the stream lock: start the next frame's prepare on another handler thread once the running
        frame's prepare is finished (prepares in order, one frame ahead at most)."""
        if len(q) < 2 or executor is None:
            return
        (cur, _), (nxt, fn) = q[0], q[1]
        prepare = getattr(fn, "prepare", None)
        if prepare is None or nxt.prepared is not None or nxt.cancelled.is_set():
            return
        if cur.prepared is None or not cur.prepared.done():
            return
        try:
            nxt.prepared = executor.submit(prepare, nxt)
        except RuntimeError:   # the executor is shutting down: the frame is prepared in its turn
            pass

    def _prepare_now(self, ctx: RequestContext, prepare: Callable) -> None:
        """Finish frame k's prepare before frame k runs: wait for it when it already runs ahead; run it here
        when it never started or still waits behind busy handler threads (taken back, so that no thread
        waits on a task no thread is free to run). Its Future stays unfinished until then, so the next
        frame's prepare cannot start before it."""
        with self._stream_lock:
            ahead = ctx.prepared
            mine = ahead is None or ahead.cancel()
            if mine:
                ahead = ctx.prepared = Future()
        if not mine:
            futures_wait([ahead])
            return
        try:
            ahead.set_result(prepare(ctx))
        except Exception as exc:   # the handler raises it in its turn, as if it had prepared the frame itself
            ahead.set_exception(exc)

    def _echo(self, ctx: RequestContext) -> Optional[bytes]:
        """Diagnostics/Echo in every worker. Actions other than echo / shm_echo (sleep, block, stream, grow) are
        fault-injection tools for the test suites and only run when the service was started with
        PML_FAULT_INJECTION=1 in its environment; otherwise they answer INVALID_ARGUMENT."""
        from protos import pythonml_pb2 as X
        req = X.EchoRequest.FromString(ctx.payload)
        action = req.action or "echo"
        if action in ("sleep", "block", "stream", "grow") and os.environ.get(FAULT_INJECTION_ENV) != "1":
            raise WorkerError("INVALID_ARGUMENT", f"Echo: action '{action}' is a fault-injection tool; start the "
                                                  f"service with {FAULT_INJECTION_ENV}=1 to use it")
        return self.echo_action(req, ctx, action)

    def echo_reply(self, req, ctx: RequestContext, part: int = 0) -> bytes:
        """An EchoReply for `req`: its payload, our pid and id, and the sha256 of the shm frame if any."""
        from protos import pythonml_pb2 as X
        out = X.EchoReply(payload=req.payload, part=part, pid=os.getpid(), worker_id=self.worker_id)
        frame = ctx.frame_bytes()
        if frame is not None:
            out.sha256 = hashlib.sha256(frame).hexdigest()
        return out.SerializeToString()

    def echo_action(self, req, ctx: RequestContext, action: str) -> Optional[bytes]:
        """echo, shm_echo, sleep, block, stream, grow (no fault-injection gate: callers decide). `block` is a
        stuck handler: it sleeps sleep_ms ignoring cancellation, like a read() that never returns."""
        if action in ("echo", "shm_echo"):
            return self.echo_reply(req, ctx)
        if action == "block":
            time.sleep(max(0, req.sleep_ms) / 1000.0)
            return self.echo_reply(req, ctx)
        if action == "sleep":
            end = time.time() + max(0, req.sleep_ms) / 1000.0
            while time.time() < end:
                ctx.check_cancelled()
                time.sleep(0.005)
            return self.echo_reply(req, ctx)
        if action == "stream":
            for i in range(max(0, min(req.parts, 1_000_000))):
                ctx.check_cancelled()
                ctx.send_partial(self.echo_reply(req, ctx, i))
                if req.sleep_ms > 0:
                    time.sleep(req.sleep_ms / 1000.0)
            return None
        if action != "grow":
            raise WorkerError("INVALID_ARGUMENT", f"Echo: unknown action {action[:40]!r} for the {self.pool} worker "
                                                  "(echo, shm_echo; sleep, block, stream, grow with PML_FAULT_INJECTION=1)")
        if not 0 < req.grow_mb <= 64 * 1024:
            raise WorkerError("INVALID_ARGUMENT", f"Echo: grow_mb {req.grow_mb} out of range (1..65536)")
        ballast = getattr(self, "_fault_ballast", [])
        self._fault_ballast = ballast
        for left in range(req.grow_mb, 0, -16):   # 16 MiB at a time: the heartbeat thread keeps running
            ballast.append(bytearray(b"\x01") * (min(16, left) * 2**20))   # touched pages: counts in RSS
            time.sleep(0.001)
        return self.echo_reply(req, ctx)

    def _dispatch(self, executor: ThreadPoolExecutor, command: bytes, header: dict, frames: list,
                  take: bool = False) -> Optional[tuple]:
        """Act on one message from the broker. With `take`, a REQUEST outside any stream is not submitted to
        the executor but returned as (ctx, fn) for the calling thread to run (serve(): the leader)."""
        if command == P.REQUEST:
            rid = str(header.get("id", ""))
            method = str(header.get("method", ""))
            fn = self._handlers.get(method)
            if fn is None:
                self._send(P.ERROR, P.error_header(rid, "UNIMPLEMENTED", f"the {self.pool} worker does not implement {method}"))
                return
            stream = header.get("stream")
            state = None
            if stream is not None:
                if str(stream) in self._closed_streams:
                    self._send(P.ERROR, P.error_header(rid, "CANCELLED", f"{method}: stream {stream} was already "
                                                                        "closed; open a new stream"))
                    return
                state = self._streams.setdefault(str(stream), {})
            ctx = RequestContext(request_id=rid, method=method, payload=bytes(frames[0]) if frames else b"",
                                 header=header, frames=frames, stream_state=state)
            ctx._send_partial = lambda data, rid=rid: self._send(P.PARTIAL, {"id": rid}, [data])
            ctx._frame_view = self._frame_view_for(header, frames)
            with self._inflight_lock:
                self._inflight[rid] = ctx
            if self._early_cancels and self._early_cancels.pop(rid, 1) is None:
                ctx.cancelled.set()   # its CANCEL came first (another channel)
            if stream is None:
                if take:
                    return ctx, fn
                executor.submit(self._run_request, ctx, fn)
                return None
            with self._stream_lock:
                q = self._stream_queues.setdefault(str(stream), deque())
                q.append((ctx, fn))
                start = len(q) == 1
                if len(q) == 2:   # the running frame's step may overlap this frame's prepare
                    self._prepare_ahead(q, executor)
            if start:
                executor.submit(self._run_stream, str(stream), executor)
        elif command == P.CANCEL:
            rid = str(header.get("id", ""))
            with self._inflight_lock:
                ctx = self._inflight.get(rid)
            if ctx is not None:
                ctx.cancelled.set()
            else:   # finished, or its REQUEST is still on its way on the other channel
                self._early_cancels.remember(rid)
        elif command == P.STREAM_CLOSE:
            self._on_stream_close(executor, str(header.get("stream", "")))
        elif command == P.STOP:
            self._stopping.set()

    def _on_stream_close(self, executor: ThreadPoolExecutor, stream: str) -> None:
        """The stream ended (client done, cancelled or gone). Its frames still queued are cancelled; its
        state is closed now if none of its frames runs, else by the stream's thread after that frame."""
        self._closed_streams.remember(stream)
        state = self._streams.pop(stream, None)
        if state is None:
            return
        with self._stream_lock:
            q = self._stream_queues.get(stream)
            if q:
                for ctx, _ in q:
                    ctx.cancelled.set()
                self._close_after[stream] = state
                return
        executor.submit(self._close_stream, stream, state)

    def _close_stream(self, stream_id: str, state: dict) -> None:
        for value in list(state.values()):
            close = getattr(value, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:
                    self.log.warning("closing stream %s state: %s", stream_id, exc)
        state.clear()
        self.on_stream_close(stream_id, state)

    def _follow(self) -> None:
        """A leader/follower thread: wait for the turn to read the socket, read until it takes a request,
        pass the turn on, run the request; until the worker stops."""
        self._init_handler_thread()
        while True:
            with self._followers_lock:
                self._followers += 1
            self._lead_lock.acquire()
            with self._followers_lock:
                self._followers -= 1
            try:
                job = self._lead()
            finally:
                self._lead_lock.release()
            if job is None:
                return
            self._run_request(*job)

    def _lead(self) -> Optional[tuple]:
        """The leader's loop: dispatch what the broker sends and send what other threads queued, until a
        request comes that this thread may run itself (a follower waits to lead) or the worker stops."""
        sock, poller, executor = self._io
        while not self._stopping.is_set():
            events = dict(poller.poll(200))
            job = None
            if sock in events:
                while True:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    try:
                        command, header, frames = P.decode(parts, P.TO_WORKER_COMMANDS)
                    except P.ProtocolError as exc:
                        self._malformed += 1
                        self.log.warning("dropped malformed message (%d so far): %s", self._malformed, exc)
                        continue
                    job = self._dispatch_read(executor, command, header, frames, job)
            if self._dgram is not None and self._dgram.fileno() in events:
                job = self._drain_datagrams(executor, job)
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            while True:
                try:
                    msg = self._outq.get_nowait()
                except queue.Empty:
                    break
                sock.send_multipart(msg, copy=False)
            if job is not None:
                return job
        return None

    def _dispatch_read(self, executor: ThreadPoolExecutor, command: bytes, header: dict, frames: list,
                       job: Optional[tuple]) -> Optional[tuple]:
        """Dispatch a message the leader read (from the DEALER or a datagram); the first request it may take
        as its own job (while a follower waits to take the turn) is returned as the leader's job."""
        with self._followers_lock:
            take = job is None and self._followers > 0
        taken = self._dispatch(executor, command, header, frames, take=take)
        return job or taken

    def _drain_datagrams(self, executor: ThreadPoolExecutor, job: Optional[tuple]) -> Optional[tuple]:
        """The leader reads the request datagrams waiting; like the DEALER's messages, the first request
        may become the leader's own job. A datagram that does not parse is counted and dropped."""
        while True:
            try:
                data = self._dgram.recv(P.DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                return job
            except OSError as exc:
                self.log.warning("datagram socket: %s", exc)
                return job
            try:
                command, header, frames = P.decode(P.split_datagram(data), P.DGRAM_COMMANDS)
                if command == P.REQUEST and header.get("stream") is not None:
                    raise P.ProtocolError("a stream's request as a datagram")
            except P.ProtocolError as exc:
                self._malformed += 1
                self.log.warning("dropped malformed datagram (%d so far): %s", self._malformed, exc)
                continue
            job = self._dispatch_read(executor, command, header, frames, job)

    def _bind_dgram(self) -> None:
        """Bind `w-<worker id>.dgram` (the id carries the generation: a successor never shares it)."""
        if not self._dgram_path:
            return
        try:
            self._dgram = P.bind_datagram(self._dgram_path)
        except OSError as exc:
            self.log.warning("datagram socket %s not bound (%s): requests come by ZeroMQ", self._dgram_path, exc)
            self._dgram_path = ""

    def unlink_dgram(self) -> None:
        if self._dgram_path:
            P.unlink_quietly(self._dgram_path)

    def serve(self) -> int:
        sock = self._socket(self.worker_id)
        t0 = time.time()
        self.setup()
        self._handlers = dict(self.handlers())
        self._handlers.setdefault(ECHO_METHOD, self._echo)
        self.log.info("setup done in %.2fs; %d methods", time.time() - t0, len(self._handlers))
        self._bind_dgram()
        ready = self._status()
        if self._dgram is not None:
            ready["dgram"] = self._dgram_path
        sock.send_multipart(P.encode(P.READY, ready))
        hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        hb.start()
        executor = ThreadPoolExecutor(max_workers=max(1, self.capacity), thread_name_prefix="handler",
                                      initializer=self._init_handler_thread)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._dgram is not None:
            poller.register(self._dgram.fileno(), zmq.POLLIN)
        self._io = (sock, poller, executor)
        # leader/followers: capacity + 1 threads take turns reading the socket; the reader of a request
        # runs it itself after handing the socket to a waiting thread, so a request starts without a
        # hand-off to (and a wake-up of) another thread; streams and requests that find no waiting thread
        # go to the executor as before
        for i in range(self.capacity + 1):
            threading.Thread(target=self._follow, name=f"leader-{i}", daemon=True).start()
        while not self._stopping.wait(1.0):
            pass
        self._lead_lock.acquire()   # the last leader has seen the stop: nobody reads the socket any more
        self.unlink_dgram()
        # graceful stop: let in-flight requests finish for a bounded time
        deadline = time.time() + self.args.drain_seconds
        executor.shutdown(wait=False)
        while time.time() < deadline:
            with self._inflight_lock:
                if not self._inflight:
                    break
            time.sleep(0.05)
        while True:
            try:
                sock.send_multipart(self._outq.get_nowait(), copy=False)
            except queue.Empty:
                break
        sock.send_multipart(P.encode(P.DISCONNECT, {"worker_id": self.worker_id}))
        with self._thread_socks_lock:
            for s in self._thread_socks:
                s.close(linger=500)
        sock.close(linger=500)
        return 0


def worker_arg_parser(default_pool: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"PythonML {default_pool} worker (started by run.py)")
    ap.add_argument("--pool", default=default_pool)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--connect", required=True)
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--shm-fd", type=int, default=-1)
    ap.add_argument("--shm-slots", type=int, default=0)
    ap.add_argument("--shm-slot-size", type=int, default=0)
    ap.add_argument("--options-json", default="{}")
    ap.add_argument("--heartbeat-interval", type=float, default=1.0)
    ap.add_argument("--drain-seconds", type=float, default=10.0)
    ap.add_argument("--max-message-bytes", type=int, default=256 * 2**20)
    ap.add_argument("--curve-server-key", default="")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-format", default="text")
    return ap


def run_worker_main(worker_cls: type, argv=None) -> None:
    proc.set_pdeathsig(signal.SIGKILL)
    args = worker_arg_parser(worker_cls.pool).parse_args(argv)
    logs.configure(args.log_level, args.log_format, process_name=f"{args.pool}@{args.device}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; Ctrl-C goes to run.py
    worker = worker_cls(args)

    def on_term(signum, frame):
        worker._stopping.set()
    signal.signal(signal.SIGTERM, on_term)
    try:
        code = worker.serve()
    except Exception:
        logging.getLogger("worker").critical("worker failed: %s", traceback.format_exc())
        code = 3
    worker.unlink_dgram()
    sys.stdout.flush()
    os._exit(code)
