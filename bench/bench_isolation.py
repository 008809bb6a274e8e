"""Isolation: does a busy LLM slow a camera stream down, and a camera stream the LLM? Ours vs the
single-process peer, in one run.

For each server, ours (run.py --pools vision,hf with its default CPU policy; and, for the before, with
--cpu-policy off; with --before also the automatic policy before the core split, nice 10 on every core:
`vision[cpus=<all>],hf[cpus=<all>;sched=normal]`) and the single-process peer (bench/peers/single_process.py:
one grpc.aio process, the same vision and hf handlers on thread pools):
- pose alone: a StreamPoseTracking stream of 640x480 rgb frames (the gesture clip, cycled): frames per
  second with IN_FLIGHT frames in flight, then the per-frame round trip p99 with one frame in flight;
- pose while an LLM streams: the same while another client keeps greedy GenerateText streams going
  (SmolLM2-135M-Instruct, one after another);
- LLM alone: tokens/s of one greedy GenerateText stream (request to last token);
- LLM while pose streams: the same while another client keeps a pose stream going (IN_FLIGHT in flight).
The other client is another process (`--load llm|pose ADDRESS`), as a camera client and a chat client are:
on a thread of the measuring process its gRPC threads shared that process's GIL with the measured stream
(pose fps under an LLM 0.941x alone with the LLM client on a thread, 0.959x with it in a process, 5 turns
against one server, same run).
The servers stay up and are measured in turns (REPEATS each). Rows, per server: value = median under
load, baseline = median alone, ratio = median of the turns' own ratios (each turn measures alone and under
load back to back); goals (issue 16): pose p99 <= 1.1x, pose fps >= 0.95x, LLM tokens/s >= 0.6x.

Usage: bench/bench_isolation.py [--full] [--turns N] [--only-ours] [--before]  (--only-ours: no peer and no
--cpu-policy off server; the default measures ours, ours with --cpu-policy off and the peer, REPEATS turns).
"""
from __future__ import annotations

import os
import select
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import pct, row  # noqa: E402

IN_FLIGHT = 3
REPEATS = 3
MODEL = "SmolLM2-135M-Instruct"
PROMPT = "Write a detailed story about a dragon who learns to cook."


class Background:
    """A load on another thread (its own channel) until stop(); `started` is set once it answered once."""

    def __init__(self, target):
        self.stop_event = threading.Event()
        self.started = threading.Event()
        self.error: list = []
        self._thread = threading.Thread(target=self._run, args=(target,), daemon=True)

    def _run(self, target) -> None:
        try:
            target(self.stop_event, self.started)
        except Exception as exc:  # noqa: BLE001 - reported by stop()
            self.error.append(exc)
            self.started.set()

    def __enter__(self) -> "Background":
        self._thread.start()
        if not self.started.wait(300):
            raise TimeoutError("the background load never answered")
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self._thread.join(60)
        if self.error:
            raise RuntimeError(f"background load failed: {self.error[0]}")


class LoadProcess:
    """A background load in its own process (this file with `--load llm|pose ADDRESS`) until the block ends;
    entered once the load answered once. A load that fails is reported with its error output."""

    def __init__(self, kind: str, address: str):
        self.kind, self.address = kind, address
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LoadProcess":
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--load", self.kind, self.address],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "STARTED":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=60)
            raise RuntimeError(f"the background {self.kind} load did not start: {err.strip()[-2000:]}")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if self.proc.returncode != 0 and exc[0] is None:
            raise RuntimeError(f"the background {self.kind} load failed ({self.proc.returncode}): {err.strip()[-2000:]}")


def _load_main(kind: str, address: str) -> int:
    """The body of a LoadProcess: run the load on a thread until SIGTERM."""
    if kind == "llm":
        target = llm_load(address, 1024)
    else:
        from bench.bench_vision import load_frames, payloads
        target = pose_load(address, payloads("rgb", load_frames(), 100))
    load = Background(target)
    signal.signal(signal.SIGTERM, lambda *_: load.stop_event.set())
    with load:
        print("STARTED", flush=True)
        while not load.stop_event.wait(0.5):
            pass
    return 0


def _channel(address: str):
    import grpc
    return grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20),
                                                   ("grpc.max_receive_message_length", 64 * 2**20)])


def llm_stream(address: str, max_new: int, stop: threading.Event | None = None,
               started: threading.Event | None = None) -> tuple[int, float]:
    """(tokens, seconds) of one greedy GenerateText stream; cancelled early once `stop` is set."""
    from protos import ml_inference_pb2 as ML
    from protos import ml_inference_pb2_grpc as MLG
    with _channel(address) as ch:
        req = ML.TextRequest(prompt=PROMPT, model=MODEL, max_length=max_new, temperature=0.0)
        t0 = time.perf_counter()
        call = MLG.TransformersServiceStub(ch).GenerateText(req, timeout=600)
        tokens = 0
        for piece in call:
            tokens = piece.tokens_generated
            if started is not None:
                started.set()
            if stop is not None and stop.is_set():
                call.cancel()
                break
        return tokens, time.perf_counter() - t0


def llm_load(address: str, max_new: int):
    def target(stop: threading.Event, started: threading.Event) -> None:
        while not stop.is_set():
            llm_stream(address, max_new, stop, started)
    return target


def pose_load(address: str, data: list):
    """A pose stream that goes on (the clip cycled, IN_FLIGHT frames in flight) until stopped."""
    def target(stop: threading.Event, started: threading.Event) -> None:
        from protos import ml_inference_pb2 as pb
        from protos import ml_inference_pb2_grpc as pbg
        from bench.bench_vision import H, W
        window = threading.Semaphore(IN_FLIGHT)

        def frames():
            i = 0
            while not stop.is_set():
                window.acquire()
                yield pb.VideoFrame(frame_data=data[i % len(data)], format="rgb", width=W, height=H,
                                    frame_number=i, timestamp_ms=33 * i)
                i += 1
        with _channel(address) as ch:
            for _ in pbg.MediapipeServiceStub(ch).StreamPoseTracking(frames(), timeout=3600):
                started.set()
                window.release()
    return target


def pose_pass(address: str, data: list) -> tuple[float, float]:
    """(fps with IN_FLIGHT in flight, round trip p99 in ms with one in flight) of two pose streams."""
    from bench.bench_vision import through_service
    from protos import ml_inference_pb2_grpc as pbg
    with _channel(address) as ch:
        stub = pbg.MediapipeServiceStub(ch)
        fps, _, _ = through_service(stub, "pose", "rgb", data, IN_FLIGHT)
        _, rtt, _ = through_service(stub, "pose", "rgb", data, 1)
    return fps, pct([1000 * t for t in rtt], 99)


def measure(address: str, data: list, max_new: int) -> dict:
    """The four measurements against one server (warmed first)."""
    pose_pass(address, data[:10])
    llm_stream(address, 8)
    out = {}
    out["pose_fps"], out["pose_p99"] = pose_pass(address, data)
    with LoadProcess("llm", address):
        out["pose_fps_llm"], out["pose_p99_llm"] = pose_pass(address, data)
    n, dt = llm_stream(address, max_new)
    out["tok_s"] = n / dt
    with LoadProcess("pose", address):
        n, dt = llm_stream(address, max_new)
    out["tok_s_pose"] = n / dt
    return out


PAIRS = (("pose_p99", "pose p99 while an LLM streams / alone", "<= 1.1", "ms", "1 frame in flight"),
         ("pose_fps", "pose fps while an LLM streams / alone", ">= 0.95", "fps", f"{IN_FLIGHT} frames in flight"),
         ("tok_s", "LLM tokens/s while pose streams / alone", ">= 0.6", "tokens/s", f"{MODEL} greedy"))
LOADED = {"pose_p99": "pose_p99_llm", "pose_fps": "pose_fps_llm", "tok_s": "tok_s_pose"}


def _rows(who: str, runs: list, note: str) -> list:
    """One row per pair: medians of the turns' values, and the median of the turns' own ratios."""
    rows = []
    for key, metric, goal, unit, how in PAIRS:
        loaded = [r[LOADED[key]] for r in runs]
        alone = [r[key] for r in runs]
        ratios = [x / y for x, y in zip(loaded, alone)]
        rows.append(row("isolation", f"{metric} ({who})", statistics.median(loaded), statistics.median(alone),
                        goal=goal if who == "ours" else "", unit=unit,
                        ratio=statistics.median(ratios),
                        note=f"{how}; {note}; ratios of {len(runs)} turns " + "/".join(f"{x:.2f}" for x in ratios)))
    return rows


POLICY_OFF = "ours, --cpu-policy off"
NO_SPLIT = "ours, nice 10 without the core split"


def run(quick: bool = True, peer: bool = True, policy_off: bool = True, before: bool = False,
        repeats: int = REPEATS) -> list:
    """The servers stay up; they are measured in turns (ours, ours without the CPU policy, peer; `repeats`
    times), so that a burst of someone else's work on this shared machine does not fall on one of them only.
    `policy_off`: also ours started with --cpu-policy off (the before of issue 16's CPU policy); `before`: also
    ours with the automatic policy as it was before the core split and SCHED_IDLE (common/cpu_policy.py)."""
    from contextlib import ExitStack

    from bench.bench_vision import load_frames, payloads
    from common.cpu_policy import available_cpus, format_cpus
    from tests.service import start_service
    n, max_new = (250, 128) if quick else (400, 256)   # 100 frames (1.4 s a pass) swung +-0.05 turn to turn
    data = payloads("rgb", load_frames(), n)
    args = ["--pools", "vision,hf", "--cuda", "off"]
    every = format_cpus(available_cpus())
    with ExitStack() as stack:
        servers = {"ours": stack.enter_context(start_service(args=args, wait_service="ml.MediapipeService")).address}
        if before:
            servers[NO_SPLIT] = stack.enter_context(start_service(
                args=["--pools", f"vision[cpus={every}],hf[cpus={every};sched=normal]", "--cuda", "off"],
                wait_service="ml.MediapipeService")).address
        if policy_off:
            servers[POLICY_OFF] = stack.enter_context(start_service(
                args=args + ["--cpu-policy", "off"], wait_service="ml.MediapipeService")).address
        if peer:
            from bench.peers.launch import start_peer
            servers["single-process peer"] = stack.enter_context(start_peer("vision,hf")).address
        runs: dict = {who: [] for who in servers}
        for _ in range(repeats):
            for who, address in servers.items():
                runs[who].append(measure(address, data, max_new))
    notes = {"ours": "run.py --pools vision,hf (default CPU policy and thread budgets)",
             NO_SPLIT: f"run.py --pools vision[cpus={every}],hf[cpus={every};sched=normal]",
             POLICY_OFF: "run.py --pools vision,hf --cpu-policy off",
             "single-process peer": "one grpc.aio process, the same handlers on thread pools"}
    rows = []
    for who, rs in runs.items():
        rows += _rows(who, rs, f"{notes[who]}; n={n}, {max_new} tokens")
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        sys.exit(_load_main(sys.argv[2], sys.argv[3]))
    import argparse
    ap = argparse.ArgumentParser(description="isolation: pose vs a streaming LLM, ours vs peers, in turns")
    ap.add_argument("--full", action="store_true", help="400 frames and 256 tokens instead of 250 and 128")
    ap.add_argument("--turns", type=int, default=REPEATS)
    ap.add_argument("--only-ours", action="store_true", help="no peer and no --cpu-policy off server")
    ap.add_argument("--before", action="store_true", help="also ours with nice 10 and no core split")
    opts = ap.parse_args()
    for r in run(quick=not opts.full, peer=not opts.only_ours, policy_off=not opts.only_ours, before=opts.before,
                 repeats=opts.turns):
        print(r)
