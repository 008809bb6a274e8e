"""The process manager: the one owner of every child process (the gRPC facade and every worker).

It spawns them, notices an exit at once (a pidfd per child in the same poll as the router's sockets),
kills a worker that does not become ready (startup timeout), that stops sending heartbeats (hung) or
whose every credit is held by stuck requests (broker/watchdog.py), restarts each with capped back-off,
replays the model loads a worker had acknowledged (and the operator's --preload) when its successor is
READY, and drains and stops everything on shutdown. It tells the router of births and deaths as events
(`worker_started`, `worker_exited`) and the router never touches a process; the router tells it what
arrives on the sockets (READY, LOADED, UNLOADED, the facade's HELLO) through `RouterEvents`.

Like vLLM's engine client, one object holds every socket (through its router) and every child, and a
dead child becomes a clear error: the requests it held end UNAVAILABLE naming the worker, the pid and
how it died; its streams end with "open a new stream"; a dead facade's requests are cancelled.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import zmq

from broker import views
from broker.children import Backoff, Child, Children, describe_exit
from broker.router import Router, RouterConfig, WorkerState
from broker.watchdog import stall_reason
from common.cpu_policy import CpuPolicy

log = logging.getLogger("broker")

TIMER_S = 0.02        # restart, timeout and queue-sweep checks
SNAPSHOT_S = 0.5      # the stats snapshot the metrics endpoint reads


@dataclass
class ManagerConfig:
    heartbeat_timeout_s: float = 5.0
    startup_timeout_s: float = 300.0
    stall_timeout_s: float = 300.0   # progress watchdog: longest silence of a request without deadline (0 = off)


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
    replay: dict = field(default_factory=dict)   # model_id -> (method, payload): acknowledged loads and preloads
    restart_at: Optional[float] = None
    worker: Optional[WorkerState] = None
    child: Optional[Child] = None
    policy: Optional[CpuPolicy] = None           # cores, priority and thread budget (common/cpu_policy.py)
    remote: bool = False                         # its workers are Ray actors on other nodes

    @property
    def key(self) -> str:
        return f"{self.pool}@{self.device}#{self.index}"


@dataclass
class FacadeSlot:
    """The gRPC facade process: fatal if it dies before its first HELLO, else restarted with back-off."""
    make_child: Callable[[], Child]
    on_ready: Callable[[dict], None]
    child: Optional[Child] = None
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.1, cap=2.0))
    restarts: int = 0
    restart_at: Optional[float] = None
    ready: bool = False          # it said HELLO once: later deaths are restarts, not a failed start


class ProcessManager:
    def __init__(self, config: ManagerConfig, router_config: RouterConfig, remote=None):
        """`remote`: the Ray launcher (broker/ray_children.py) of the pools placed on a Ray cluster, or None."""
        self.cfg = config
        self.children = Children(remote=remote)
        self.router = Router(router_config, self)
        self.slots: list[WorkerSlot] = []
        self.facade: Optional[FacadeSlot] = None
        self.by_pidfd: dict[int, object] = {}     # pidfd -> WorkerSlot | FacadeSlot
        self.counters = {"crashes": 0, "hangs": 0, "stalls": 0}
        self.started = time.time()
        self.snapshot: dict = {}
        self.stopping = False
        self.failed: Optional[str] = None        # why the service cannot run (the facade never started)
        self._last_timers = 0.0
        self._last_snapshot = 0.0
        self._poller_obj: Optional[zmq.Poller] = None
        self._poller_fds: tuple = ()

    # ---------------------------------------------------------------- children
    def start_facade(self, make_child: Callable[[], Child], on_ready: Callable[[dict], None]) -> None:
        self.facade = FacadeSlot(make_child, on_ready)
        self._spawn_facade()

    def _spawn_facade(self) -> None:
        f = self.facade
        f.restart_at = None
        f.child = self.children.spawn(f.make_child())
        self.by_pidfd[f.child.pidfd] = f

    def add_worker(self, pool: str, device: str, make_child: Callable[[str], Child], replay: dict = (),
                   policy: Optional[CpuPolicy] = None) -> WorkerSlot:
        slot = WorkerSlot(pool, device, self.router.add_pool_slot(pool, device), make_child, policy=policy)
        slot.replay.update(replay or {})
        self.slots.append(slot)
        self._spawn_worker(slot)
        return slot

    def _spawn_worker(self, slot: WorkerSlot) -> None:
        slot.generation += 1
        slot.restart_at = None
        worker_id = f"{slot.key}.{slot.generation}"
        child = slot.make_child(worker_id)
        if child.placement is not None:
            problem = self.children.remote.check_fits(child.placement)
            if problem:
                log.warning("%s waits for Ray to place it: %s (it is killed and placed again after "
                            "--startup-timeout-s)", worker_id, problem)
        child = self.children.spawn(child)
        slot.child = child
        remote = slot.remote = child.placement is not None
        slot.worker = WorkerState(worker_id=worker_id, pool=slot.pool, device=slot.device, index=slot.index,
                                  pid=0 if remote else child.pid, started_at=child.started_at, remote=remote)
        self.by_pidfd[child.pidfd] = slot
        self.router.worker_started(slot.worker)
        if remote:
            log.info("asked Ray to place %s (%s)", worker_id, child.placement.describe())
        else:
            log.info("started %s pid=%d", worker_id, child.pid)

    def _slot_of(self, ws: WorkerState) -> Optional[WorkerSlot]:
        for slot in self.slots:
            if slot.worker is ws:
                return slot
        return None

    # ---------------------------------------------------------------- exits
    def _on_exit(self, pidfd: int) -> None:
        owner = self.by_pidfd.pop(pidfd, None)
        child = self.children.reap(pidfd)
        if isinstance(owner, WorkerSlot) and owner.worker is not None:
            self._worker_exited(owner, owner.worker, child or owner.child)
        elif isinstance(owner, FacadeSlot):
            self._facade_exited(owner, child)

    def _worker_exited(self, slot: WorkerSlot, ws: WorkerState, child: Child) -> None:
        reason = child.exit_note or describe_exit(child.exit_code)
        expected = ws.stop_sent or self.stopping
        pid = ws.pid or child.pid
        if not expected and ws.kill_reason is None:
            self.counters["crashes"] += 1
            log.error("%s (pid %d) died: %s; %d in-flight requests fail", ws.worker_id, pid, reason,
                      len(ws.inflight))
        node = ws.status.get("node") if ws.remote else ""
        where = f"the {slot.pool} worker on {slot.device} (pid {pid}{f' on Ray node {node}' if node else ''})"
        if ws.kill_reason is not None and not expected:
            message = f"{where} was killed: {ws.kill_reason}; it is being restarted, retry the request"
        else:
            message = (f"{where} {'stopped' if expected else 'crashed'} while processing this request ({reason}); "
                       f"it is being restarted, retry the request")
        slot.worker = slot.child = None
        self.router.worker_exited(ws, message, f"the {slot.pool} worker serving this stream (pid {pid}) died "
                                               f"({reason}); its tracking state is lost: open a new stream")
        if self.stopping:
            return
        delay = 0.0 if expected else slot.backoff.next_delay(time.time() - child.started_at)
        slot.restarts += 1
        slot.restart_at = time.time() + delay
        log.info("restarting %s in %.2fs (restart #%d)", slot.key, delay, slot.restarts)

    def _facade_exited(self, f: FacadeSlot, child: Optional[Child]) -> None:
        how = describe_exit(child.exit_code if child else None)
        if self.stopping:
            return
        if not f.ready:
            self.failed = f"the gRPC facade failed to start ({how}); see the log above"
            log.critical(self.failed)
            self.stopping = True
            return
        log.error("the gRPC facade died (%s); restarting it", how)
        if child is not None:
            dropped = self.router.forget_facade(f"facade-{child.pid}".encode())
            if dropped:
                log.warning("cancelled %d requests of the dead facade", dropped)
        f.restarts += 1
        f.restart_at = time.time() + f.backoff.next_delay(time.time() - child.started_at if child else 0.0)

    # ---------------------------------------------------------------- RouterEvents
    def worker_ready(self, ws: WorkerState) -> None:
        slot = self._slot_of(ws)
        if slot is None:
            return
        for model_id, (method, payload) in list(slot.replay.items()):
            log.info("replaying load of %s on %s", model_id, ws.worker_id)
            self.router.submit_internal(ws, method, model_id, payload)

    def model_loaded(self, ws: WorkerState, model_id: str, method: str, payload: bytes) -> None:
        slot = self._slot_of(ws)
        if slot is not None:
            slot.replay[model_id] = (method, payload)

    def model_unloaded(self, ws: WorkerState, model_id: str) -> None:
        slot = self._slot_of(ws)
        if slot is not None:
            slot.replay.pop(model_id, None)

    def facade_hello(self, header: dict) -> None:
        if self.facade is not None:
            first = not self.facade.ready
            self.facade.ready = True
            if first:
                self.facade.on_ready(header)

    def view(self, name: str) -> dict:
        return views.view(name, self)

    # ---------------------------------------------------------------- timers
    def _check_timers(self, now: float) -> None:
        f = self.facade
        if f is not None and f.restart_at is not None and now >= f.restart_at and not self.stopping:
            self._spawn_facade()
        for slot in self.slots:
            if slot.worker is None and slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                self._spawn_worker(slot)
            ws = slot.worker
            if ws is None or ws.state == "dead" or ws.kill_reason is not None:
                continue
            if ws.state == "starting":
                if now - ws.started_at > self.cfg.startup_timeout_s:
                    log.error("%s did not become ready in %.0fs; killing it", ws.worker_id, self.cfg.startup_timeout_s)
                    self.children.kill(slot.child)
            elif now - ws.last_seen > self.cfg.heartbeat_timeout_s:
                self.counters["hangs"] += 1
                silent = now - ws.last_seen
                log.error("%s (pid %d) missed heartbeats for %.1fs: killing it as hung", ws.worker_id, ws.pid, silent)
                ws.kill_reason = (f"it sent no heartbeat for {silent:.1f}s (hung, or its node unreachable): its Ray "
                                  f"actor was killed" if ws.remote else
                                  f"it sent no heartbeat for {silent:.1f}s (hung): SIGKILL")
                self.children.kill(slot.child, signal.SIGKILL)
            else:
                self._check_progress(slot, ws, now)

    def _check_progress(self, slot: WorkerSlot, ws: WorkerState, now: float) -> None:
        """Progress watchdog (broker/watchdog.py): kill a worker whose credits are all held by stuck requests."""
        reason = stall_reason(ws, now, max(5.0, self.cfg.heartbeat_timeout_s), self.cfg.stall_timeout_s)
        if reason is None:
            return
        ws.kill_reason = reason
        self.counters["hangs"] += 1
        self.counters["stalls"] += 1
        log.error("%s (pid %d): killing it as stuck (its heartbeat goes on, its handlers do not)", reason, ws.pid)
        self.children.kill(slot.child, signal.SIGKILL)

    # ---------------------------------------------------------------- the loop
    def _poller(self) -> zmq.Poller:
        fds = tuple(self.by_pidfd)
        if self._poller_obj is None or self._poller_fds != fds:
            poller = zmq.Poller()
            poller.register(self.router.backend, zmq.POLLIN)
            poller.register(self.router.frontend, zmq.POLLIN)
            if self.router.dgram_fd() is not None:
                poller.register(self.router.dgram_fd(), zmq.POLLIN)
            for fd in fds:
                poller.register(fd, zmq.POLLIN)
            self._poller_obj, self._poller_fds = poller, fds
        return self._poller_obj

    def poll_once(self, timeout_ms: int = 50) -> None:
        events = dict(self._poller().poll(timeout_ms))
        self.router.on_readable(events)
        for fd in [fd for fd in events if isinstance(fd, int) and fd in self.by_pidfd]:   # not the datagram fd
            self._on_exit(fd)
        now = time.time()
        if now - self._last_timers >= TIMER_S:
            self._last_timers = now
            self._check_timers(now)
            self.router.sweep()
        if now - self._last_snapshot >= SNAPSHOT_S:
            self._last_snapshot = now
            self.snapshot = views.stats_view(self)

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop() and not self.stopping:
            self.poll_once(50)

    # ---------------------------------------------------------------- stop
    def request_stop(self) -> None:
        """No restarts from now on (a signal arrived); `shutdown` then drains and stops."""
        self.stopping = True

    def shutdown(self, drain_s: float) -> None:
        """Graceful: SIGTERM the facade (it drains its calls) and wait for it, then STOP every worker and
        wait, then kill what is left."""
        self.stopping = True
        f = self.facade
        if self.failed is None and f is not None and f.child is not None and f.child.pidfd in self.by_pidfd:
            self.children.kill(f.child, signal.SIGTERM)
            self._wait(lambda: f.child.pidfd not in self.by_pidfd, drain_s + 3)
        for slot in self.slots:
            if slot.worker is not None:
                self.router.send_stop(slot.worker)
        self._wait(self._no_workers, min(drain_s, 10))
        for slot in self.slots:
            if slot.child is not None:
                self.children.kill(slot.child)
        self._wait(self._no_workers, 5)
        self.router.close()

    def _no_workers(self) -> bool:
        return not any(isinstance(o, WorkerSlot) for o in self.by_pidfd.values())

    def _wait(self, done: Callable[[], bool], timeout_s: float) -> None:
        end = time.time() + timeout_s
        while not done() and time.time() < end:
            self.poll_once(50)

    def kill_all(self) -> None:
        """Last resort (also after a fatal error): SIGKILL every child and reap it."""
        self.children.kill_all()
