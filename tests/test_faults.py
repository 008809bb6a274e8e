"""Fault suite on the REAL pools (vision, hf, litert), one service instance for the whole module.

For each pool: kill -9 the worker mid-request and mid-stream, SIGSTOP it (hang), push it over its memory
cap (recycled between requests); then kill the facade (run.py restarts it) and finally SIGKILL run.py
during a model load. Each case checks that the affected clients get UNAVAILABLE promptly with a clear
message, that streams on the other pools keep flowing, that the worker is back with its models loaded
again (replay) within a measured bound, and that nothing extra is left in /dev/shm or the process table.

Figures (time to the error, time to recovery, largest gap of the other pools' streams) are printed and
written as JSON to $PML_FAULT_FIGURES when set; docs/reliability.md
quotes them. Worker pids come from pythonml.v1.Stats/GetStats and are only signalled after checking that
they are > 0 and descendants of this service's run.py.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import threading
import time

import cv2
import grpc
import numpy as np
import psutil
import pytest

from common import proc as procmod
from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from protos.kserve import grpc_service_pb2 as K, grpc_service_pb2_grpc as KG
from tests.service import start_service

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.integration]

POOLS = ("vision", "hf", "litert")
HEARTBEAT_TIMEOUT_S = 2.0
RSS_CAP_MB = 1800
# models each pool holds before a fault and must hold again afterwards (replayed loads)
MODELS = {"vision": [], "hf": [("all-MiniLM-L6-v2", "feature-extraction"), ("SmolLM2-135M-Instruct", "text-generation")],
          "litert": [("face_detection_short_range", "tflite")]}
# bounds (seconds) checked by the suite; the measured figures are printed next to them
ERROR_BOUND_S = 2.0            # kill -9 -> the affected client holds its UNAVAILABLE
HANG_BOUND_S = HEARTBEAT_TIMEOUT_S + 3.0
RECOVERY_BOUND_S = 60.0        # fault -> worker READY with every model replayed
FACADE_BOUND_S = 10.0          # facade killed -> a new client call succeeds
GAP_BOUND_S = 1.0              # largest gap of another pool's stream (vision at 10 fps, echo at 20 Hz)
ASSETS = os.path.join(os.path.dirname(__file__), "assets")
FIGURES: dict = {}


def record(key: str, value) -> None:
    FIGURES[key] = value
    print(f"FIGURE {key} = {value}")
    path = os.environ.get("PML_FAULT_FIGURES")
    if not path:
        return  # printed only; set PML_FAULT_FIGURES=file.json to keep them
    try:
        with open(path, "w") as f:
            json.dump(FIGURES, f, indent=1, sort_keys=True)
    except OSError:
        pass


def shm_entries() -> set:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def descendants(pid: int) -> list:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def stats(ch) -> X.StatsResponse:
    return XG.StatsStub(ch).GetStats(X.StatsRequest(), timeout=5)


def wait_for(cond, timeout: float, interval: float = 0.05, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = cond()
        except grpc.RpcError:
            v = None
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s")


def signal_descendant(svc, pid: int, sig: int) -> None:
    """Signal a process of the service tree only: never 0, never ourselves, never outside run.py's tree."""
    assert isinstance(pid, int) and pid > 0 and pid != os.getpid(), pid
    assert pid in {p.pid for p in descendants(svc.proc.pid)}, f"pid {pid} is not a child of run.py {svc.proc.pid}"
    os.kill(pid, sig)


def ready_worker(ch, pool: str, models=(), not_pid: int = 0):
    """The pool's worker when READY, with `models` loaded (replayed) and a pid other than `not_pid`."""
    for w in stats(ch).workers:
        if w.pool == pool and w.state == "ready" and w.pid > 0 and w.pid != not_pid \
                and set(models) <= {m.model_id for m in w.models}:
            return w
    return None


def rgb_frame(w=160, h=120) -> np.ndarray:
    bgr = cv2.imread(os.path.join(ASSETS, "grace_hopper.jpg"))
    return np.ascontiguousarray(cv2.cvtColor(cv2.resize(bgr, (w, h)), cv2.COLOR_BGR2RGB))


class Flow(threading.Thread):
    """A stream that keeps flowing during a fault; records when each reply arrives."""

    def __init__(self, ch, pool: str, kind: str = "echo"):
        super().__init__(daemon=True)
        self.ch, self.pool, self.kind = ch, pool, kind
        self.name = pool if kind == "real" else f"{pool}-echo"
        self.times: list = []
        self.error = None
        self.stop_event = threading.Event()
        self.call = None

    def run(self):
        try:
            if self.kind == "real":  # vision
                rgb = rgb_frame()

                def frames():
                    n = 0
                    while not self.stop_event.is_set():
                        yield ML.VideoFrame(frame_data=rgb.tobytes(), format="rgb", width=rgb.shape[1],
                                            height=rgb.shape[0], frame_number=n, timestamp_ms=100 * n)
                        n += 1
                        time.sleep(0.1)
                self.call = MLG.MediapipeServiceStub(self.ch).StreamFaceDetection(frames(), timeout=600)
            else:
                self.call = XG.DiagnosticsStub(self.ch).Echo(
                    X.EchoRequest(pool=self.pool, action="stream", parts=1_000_000, sleep_ms=50), timeout=600)
            for _ in self.call:
                self.times.append(time.time())
        except grpc.RpcError as exc:
            if not self.stop_event.is_set():
                self.error = exc

    def finish(self, since: float) -> float:
        """Stop; returns the largest gap between replies from `since` on (or since the first reply)."""
        self.stop_event.set()
        time.sleep(0.15)
        if self.call is not None:
            self.call.cancel()
        self.join(5)
        assert self.error is None, f"{self.name} stream broke: {self.error.code()} {self.error.details()}"
        ts = [t for t in self.times if t >= since - 1.0]
        assert len(ts) >= 3, f"{self.name} stream delivered only {len(ts)} replies"
        return max(b - a for a, b in zip(ts, ts[1:]))


@pytest.fixture(scope="module")
def svc():
    shm_before = shm_entries()
    s = start_service(["--pools", ",".join(POOLS), "--cuda", "off", "--worker-threads", "1",
                       "--heartbeat-timeout-s", str(HEARTBEAT_TIMEOUT_S), "--max-worker-rss-mb", str(RSS_CAP_MB)],
                      env={"PML_FAULT_INJECTION": "1"}, wait_service="", timeout=300)
    s.shm_before = shm_before
    mm = MLG.ModelManagementServiceStub(s.channel())
    for pool, models in MODELS.items():
        for model_id, pipeline in models:
            r = mm.LoadModel(ML.LoadModelRequest(model_id=model_id, pipeline_type=pipeline), timeout=300)
            assert r.success, r.message
    ch = s.channel()
    for pool in POOLS:
        wait_for(lambda: ready_worker(ch, pool, [m for m, _ in MODELS[pool]]), 30, what=f"{pool} models listed")
    yield s
    s.stop()  # also when the last test killed run.py: closes channels, removes the log file


def check_pool_works(ch, pool: str) -> None:
    """A real request on the pool succeeds (after recovery)."""
    if pool == "vision":
        with open(os.path.join(ASSETS, "grace_hopper.jpg"), "rb") as f:
            r = MLG.MediapipeServiceStub(ch).DetectFaces(ML.ImageRequest(image_data=f.read(), format="jpeg"), timeout=60)
        assert len(r.faces) == 1
    elif pool == "hf":
        tf = MLG.TransformersServiceStub(ch)
        e = tf.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=["hello"], model="all-MiniLM-L6-v2"), timeout=60)
        assert len(e.embeddings[0].values) == 384
        parts = list(tf.GenerateText(ML.TextRequest(prompt="Hi", model="SmolLM2-135M-Instruct", max_length=3), timeout=60))
        assert parts[-1].done
    else:
        x = np.zeros((1, 128, 128, 3), np.float32)
        req = K.ModelInferRequest(model_name="face_detection_short_range", raw_input_contents=[x.tobytes()])
        req.inputs.add(name="input", datatype="FP32", shape=[1, 128, 128, 3])
        r = KG.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
        assert {o.name for o in r.outputs} == {"regressors", "classificators"}


def check_nothing_extra(svc) -> None:
    """Exactly the facade and one worker per pool under run.py; no zombie; /dev/shm as before."""
    def settled():
        kids = descendants(svc.proc.pid)
        return len(kids) == 1 + len(POOLS) and kids
    kids = wait_for(settled, 20, what="process table settled")
    # children run as `python -m common.child SIG MODULE ...`
    names = sorted(p.cmdline()[4] if p.cmdline()[2:3] == ["common.child"] else p.cmdline()[2] for p in kids)
    assert names == sorted(["facade.server"] + [f"workers.{p}_worker" for p in POOLS]), names
    zombies = [p.pid for p in psutil.Process(svc.proc.pid).children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
    assert shm_entries() == svc.shm_before
    st = stats(svc.channel())
    assert st.shm_slots_free == st.shm_slots_total


class Victim:
    """The faults' affected clients: one request in flight in the worker, plus (mid-stream) a live stream."""

    def __init__(self, ch, pool: str):
        self.ch, self.pool = ch, pool
        self.errors: dict = {}
        self.stream_msgs = 0
        self.threads = []

    def _run(self, name, fn):
        def go():
            try:
                fn()
                self.errors[name] = None
            except grpc.RpcError as exc:
                self.errors[name] = (exc.code(), exc.details(), time.time())
        t = threading.Thread(target=go, daemon=True)
        t.start()
        self.threads.append(t)

    def start_request(self):
        self._run("request", lambda: list(XG.DiagnosticsStub(self.ch).Echo(
            X.EchoRequest(pool=self.pool, action="sleep", sleep_ms=30000), timeout=90)))

    def start_stream(self):
        def stream():
            if self.pool == "vision":
                rgb = rgb_frame()

                def frames():
                    for n in range(100000):
                        yield ML.VideoFrame(frame_data=rgb.tobytes(), format="rgb", width=rgb.shape[1],
                                            height=rgb.shape[0], frame_number=n)
                        time.sleep(0.05)
                it = MLG.MediapipeServiceStub(self.ch).StreamFaceDetection(frames(), timeout=90)
            elif self.pool == "hf":
                it = MLG.TransformersServiceStub(self.ch).GenerateText(ML.TextRequest(
                    prompt="Write a very long story about a dragon who learns to cook.", model="SmolLM2-135M-Instruct",
                    max_length=4000, temperature=0.7, top_p=0.95), timeout=90)
            else:
                it = XG.DiagnosticsStub(self.ch).Echo(X.EchoRequest(pool=self.pool, action="stream", parts=100000,
                                                                    sleep_ms=20), timeout=90)
            for _ in it:
                self.stream_msgs += 1
        self._run("stream", stream)

    def join(self, timeout=30):
        for t in self.threads:
            t.join(timeout)


def start_flows(ch, victim_pool: str) -> list:
    """Streams on the other pools: a real 10 fps vision stream, and a 20 Hz Echo stream in each other worker."""
    flows = [Flow(ch, "vision", "real")] if victim_pool != "vision" else []
    flows += [Flow(ch, p) for p in POOLS if p != victim_pool]
    for f in flows:
        f.start()
    wait_for(lambda: all(len(f.times) >= 3 for f in flows), 30, what="flows started")
    return flows


def finish_flows(flows: list, since: float, key: str) -> None:
    gaps = {f.name: round(f.finish(since), 3) for f in flows}
    record(f"{key}.other_pool_max_gap_s", gaps)
    for name, gap in gaps.items():
        assert gap < GAP_BOUND_S, f"{name} stream stalled {gap:.2f}s during {key}"


def recovered(svc, ch, pool: str, models: list, w, flows: list, since: float, key: str):
    """After a fault at `since` to worker `w`: waits for its replacement with the models back (recorded as
    `key`.recovered_with_models_s), checks the other pool's streams went on, the pool serves and nothing
    extra was left behind. Returns the new worker's Stats row."""
    back = wait_for(lambda: ready_worker(ch, pool, models, not_pid=w.pid), RECOVERY_BOUND_S, what=f"{pool} back")
    record(f"{key}.recovered_with_models_s", round(time.time() - since, 2))
    finish_flows(flows, since, key)
    check_pool_works(ch, pool)
    check_nothing_extra(svc)
    return back


@pytest.mark.parametrize("pool", POOLS)
def test_kill_9_mid_request_and_mid_stream(svc, pool):
    ch = svc.channel()
    models = [m for m, _ in MODELS[pool]]
    w = wait_for(lambda: ready_worker(ch, pool, models), 60, what=f"{pool} ready")
    flows = start_flows(ch, pool)
    victim = Victim(ch, pool)
    victim.start_request()
    victim.start_stream()
    wait_for(lambda: victim.stream_msgs >= 2 and ready_worker(ch, pool, models).inflight >= 2, 60,
             what="victim requests in flight")
    t_kill = time.time()
    signal_descendant(svc, w.pid, signal.SIGKILL)
    victim.join(30)
    for name in ("request", "stream"):
        err = victim.errors.get(name)
        assert err is not None, f"{name} on {pool} did not fail after kill -9"
        code, details, t_err = err
        assert code == grpc.StatusCode.UNAVAILABLE, (name, code, details)
        assert ("crashed" in details or "died" in details) and ("retry" in details or "new stream" in details), details
        record(f"kill9.{pool}.{name}.error_after_s", round(t_err - t_kill, 3))
        assert t_err - t_kill < ERROR_BOUND_S
    back = recovered(svc, ch, pool, models, w, flows, t_kill, f"kill9.{pool}")
    assert back.restarts >= w.restarts + 1


@pytest.mark.parametrize("pool", POOLS)
def test_sigstop_hang_is_detected_and_replaced(svc, pool):
    ch = svc.channel()
    models = [m for m, _ in MODELS[pool]]
    w = wait_for(lambda: ready_worker(ch, pool, models), 60, what=f"{pool} ready")
    hangs_before = stats(ch).worker_hangs
    flows = start_flows(ch, pool)
    victim = Victim(ch, pool)
    victim.start_request()
    wait_for(lambda: ready_worker(ch, pool, models).inflight >= 1, 30, what="victim request in flight")
    t_stop = time.time()
    signal_descendant(svc, w.pid, signal.SIGSTOP)
    victim.join(30)
    code, details, t_err = victim.errors["request"]
    assert code == grpc.StatusCode.UNAVAILABLE and "retry" in details, (code, details)
    record(f"sigstop.{pool}.error_after_s", round(t_err - t_stop, 2))
    assert t_err - t_stop < HANG_BOUND_S
    recovered(svc, ch, pool, models, w, flows, t_stop, f"sigstop.{pool}")
    assert stats(ch).worker_hangs == hangs_before + 1
    assert not psutil.pid_exists(w.pid) or psutil.Process(w.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("pool", POOLS)
def test_memory_cap_recycles_between_requests_and_loses_nothing(svc, pool):
    ch = svc.channel()
    models = [m for m, _ in MODELS[pool]]
    w = wait_for(lambda: ready_worker(ch, pool, models), 60, what=f"{pool} ready")
    assert w.rss_mb < RSS_CAP_MB, f"{pool} worker already at {w.rss_mb:.0f} MB"
    crashes_before = stats(ch).worker_crashes
    flows = start_flows(ch, pool)
    errors, served, pids = [], [0], set()
    stop = threading.Event()

    def client():  # a steady client of the pool: none of its requests may fail across the recycle
        stub = XG.DiagnosticsStub(ch)
        while not stop.is_set():
            try:
                (r,) = list(stub.Echo(X.EchoRequest(pool=pool, payload=b"x"), timeout=60))
                pids.add(r.pid)
                served[0] += 1
            except grpc.RpcError as exc:
                errors.append((exc.code(), exc.details()))
            time.sleep(0.05)
    t = threading.Thread(target=client, daemon=True)
    t.start()
    t0 = time.time()
    grow = int(RSS_CAP_MB - w.rss_mb + 200)
    (r,) = list(XG.DiagnosticsStub(ch).Echo(X.EchoRequest(pool=pool, action="grow", grow_mb=grow), timeout=60))
    assert r.pid == w.pid
    back = wait_for(lambda: ready_worker(ch, pool, models, not_pid=w.pid), RECOVERY_BOUND_S, what=f"{pool} recycled")
    record(f"rss_cap.{pool}.recycled_with_models_s", round(time.time() - t0, 2))
    time.sleep(0.5)
    stop.set()
    t.join(60)
    assert errors == [], errors
    assert w.pid in pids and back.pid in pids and served[0] > 5
    assert back.rss_mb < RSS_CAP_MB
    assert stats(ch).worker_crashes == crashes_before  # a recycle is not a crash
    finish_flows(flows, t0, f"rss_cap.{pool}")
    check_pool_works(ch, pool)
    check_nothing_extra(svc)


def facade_pid(svc) -> int:
    pids = [p.pid for p in descendants(svc.proc.pid) if "facade.server" in " ".join(p.cmdline())]
    assert len(pids) == 1, pids
    return pids[0]


def test_facade_killed_is_restarted_and_clients_reconnect(svc):
    ch = svc.channel()
    old = facade_pid(svc)
    worker_pids = {w.pool: w.pid for w in stats(ch).workers}
    inflight = Victim(ch, "hf")
    inflight.start_request()
    wait_for(lambda: ready_worker(ch, "hf").inflight >= 1, 20, what="request in flight")
    t_kill = time.time()
    signal_descendant(svc, old, signal.SIGKILL)
    inflight.join(20)
    code, details, t_err = inflight.errors["request"]
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    record("facade_kill.inflight_error_after_s", round(t_err - t_kill, 3))
    # a client that connects anew is served as soon as the new facade listens ...
    def fresh_echo_ok():
        c = grpc.insecure_channel(svc.address)
        try:
            (r,) = list(XG.DiagnosticsStub(c).Echo(X.EchoRequest(pool="vision", payload=b"back"), timeout=1,
                                                   wait_for_ready=False))
            return r.payload == b"back"
        finally:
            c.close()
    wait_for(fresh_echo_ok, FACADE_BOUND_S, interval=0.02, what="facade back")
    record("facade_kill.new_client_served_after_s", round(time.time() - t_kill, 2))
    # ... and the old channel reconnects by itself (its reconnect back-off adds to this figure)
    stub = XG.DiagnosticsStub(ch)

    def echo_ok():
        (r,) = list(stub.Echo(X.EchoRequest(pool="vision", payload=b"back"), timeout=2))
        return r.payload == b"back"
    wait_for(echo_ok, FACADE_BOUND_S, interval=0.02, what="old channel reconnected")
    record("facade_kill.old_channel_served_after_s", round(time.time() - t_kill, 2))
    assert facade_pid(svc) != old
    fresh = svc.channel()
    for pool in POOLS:
        check_pool_works(fresh, pool)
    assert {w.pool: w.pid for w in stats(fresh).workers} == worker_pids  # workers untouched
    check_nothing_extra(svc)


def test_sigkill_run_py_during_model_load_leaves_nothing(svc):
    """Last: kills the module's service. A LoadModel is in flight in the hf worker when run.py dies."""
    ch = svc.channel()
    kids = [p.pid for p in descendants(svc.proc.pid)]
    run_dirs = glob.glob(os.path.join(procmod.runtime_root(), f"{procmod.RUN_DIR_PREFIX}{svc.proc.pid}-*"))
    assert run_dirs
    result = {}

    def load():
        try:
            MLG.ModelManagementServiceStub(ch).LoadModel(ML.LoadModelRequest(
                model_id="sentence-transformers/all-MiniLM-L6-v2", pipeline_type="feature-extraction"), timeout=60)
            result["ok"] = True
        except grpc.RpcError as exc:
            result["error"] = (exc.code(), exc.details())
    t = threading.Thread(target=load, daemon=True)
    t.start()
    wait_for(lambda: ready_worker(ch, "hf").inflight >= 1, 20, interval=0.01, what="load in flight")
    t_kill = time.time()
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(10)
    t.join(20)
    assert "ok" not in result, "the load finished before run.py was killed; nothing was tested"
    assert result["error"][0] == grpc.StatusCode.UNAVAILABLE, result
    end = time.time() + 15
    while time.time() < end and (any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                     for p in kids) or any(os.path.exists(d) for d in run_dirs)):
        time.sleep(0.05)
    left = [p for p in kids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    record("runpy_sigkill.everything_gone_after_s", round(time.time() - t_kill, 2))
    assert left == [], f"processes left behind: {left}"
    assert not any(os.path.exists(d) for d in run_dirs), f"run folder left behind: {run_dirs}"
    assert shm_entries() == svc.shm_before
