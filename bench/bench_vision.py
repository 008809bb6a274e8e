"""Vision: StreamFaceDetection and StreamPoseTracking at 640x480 through the service vs in-process, for frames
sent as raw rgb, as an H.264 stream and as jpeg images.

Same frames (the 21 real gesture frames, upscaled to 640x480, cycled), same MediaPipe solution (face
detection short range; pose model_complexity=1 in tracking mode), same run. In-process is what a caller
embedding MediaPipe pays per frame for the same input: decode (nothing for rgb; frames.decode for jpeg; the
same VideoDecoder the worker uses for h264, one access unit per frame) + solution.process(rgb). The service
path is client -> gRPC bidi stream -> facade (frame bytes into shared memory) -> broker -> vision worker
(decode + model) -> back.
  - throughput: the client keeps IN_FLIGHT frames in flight (2 pipelined + 1 waiting: nothing waits long)
    and counts responses per second;
  - per-frame bytes on the wire, and the facade's CPU time per frame (its process's user+sys time over the
    throughput run / frames: what moving the frame costs the one process every stream shares);
  - added latency (rgb): one frame in flight at a time, per-frame round trip minus the in-process time.
Each FPS row is the median of REPEATS turns (in-process, service, single-process peer), so that a burst of
someone else's work on a shared machine does not fall on one side only. The single-process peer
(bench/peers/single_process.py: one grpc.aio process, the vision worker's handlers on a thread pool) is
measured on the same frames when this run starts the service; its rows say "via single-process peer".
H.264: libx264 zero latency (Annex B, SPS/PPS in-band, one access unit per frame, tests/video_media.py),
crf 18. Goals: face detection >= 0.8 of in-process, pose >= 0.9 (rgb, and h264 with its decode on both sides).
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

W, H = 640, 480
REPEATS = 3     # turns of in-process, service and peer per FPS row (medians); 1 with frames_per_pass
IN_FLIGHT = 3   # frames the client keeps in flight: the facade pipelines 2, 1 waits (max_pending 2)
GOALS = {"face": 0.8, "pose": 0.9}
METHODS = {"face": "StreamFaceDetection", "pose": "StreamPoseTracking"}
FORMATS = ("rgb", "h264", "jpeg")
FORMAT_GOALS = ("rgb", "h264")   # jpeg rows are for comparison


def load_frames() -> list:
    from tests import video_media
    return video_media.gestures((W, H))


def payloads(fmt: str, frames: list, n: int) -> list[bytes]:
    """n frames (the clip cycled) as the client sends them; h264 is one stream starting with its IDR."""
    from tests import video_media
    seq = [frames[i % len(frames)] for i in range(n)]
    if fmt == "rgb":
        return [f.tobytes() for f in seq]
    if fmt == "jpeg":
        return [video_media.jpeg(f) for f in seq]
    return video_media.encode("h264", seq)


def _solution(kind: str):
    from workers.vision import solutions
    return solutions.create("face_detection_short" if kind == "face" else "pose", False)


def in_process_handler(kind: str, fmt: str, data: list, warmup: int) -> list:
    """Per-frame seconds of the service's own stream handler called on this thread (decode + the same
    models + the response): the like-for-like baseline for pose, whose stream runs the multi-person path
    (person detector + a landmark model per person), not the legacy single-person solution."""
    from protos import ml_inference_pb2 as pb
    from workers.context import make_test_context
    from workers.vision.service import VisionService
    method = "ml.MediapipeService/" + ("StreamFaceDetection" if kind == "face" else "StreamPoseTracking")
    svc = VisionService({"threads": 2})
    handler = svc.handlers()[method]
    state: dict = {}
    times = []
    try:
        for i, d in enumerate(data):
            payload = pb.VideoFrame(format=fmt, width=W, height=H, frame_number=i).SerializeToString()
            ctx, _ = make_test_context(method, payload=payload, frame=d, stream_state=state, stream="bench")
            t0 = time.perf_counter()
            handler(ctx)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        for v in list(state.values()):
            if hasattr(v, "close"):
                v.close()
        svc.close()
    return times


def in_process(kind: str, fmt: str, data: list, warmup: int) -> list:
    """Per-frame seconds of decode + model on this thread (the first `warmup` frames not counted)."""
    if kind == "pose":
        return in_process_handler(kind, fmt, data, warmup)
    from workers.vision import frames as vframes
    from workers.vision.video_decoder import VideoDecoder
    sol = _solution(kind)
    dec = VideoDecoder("h264", threads=1) if fmt == "h264" else None   # the worker's: 2 threads / 2 handlers
    times = []
    try:
        for i, d in enumerate(data):
            t0 = time.perf_counter()
            if fmt == "rgb":
                rgb = np.frombuffer(d, np.uint8).reshape(H, W, 3)
            elif fmt == "jpeg":
                rgb = vframes.decode(d, "jpeg")
            else:
                rgb = dec.decode(d)
            sol.process(rgb)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        sol.close()
        if dec is not None:
            dec.close()
    return times


def _requests(data: list, fmt: str, window: threading.Semaphore, sent: list):
    from protos import ml_inference_pb2 as pb
    w, h = (W, H) if fmt == "rgb" else (0, 0)
    for i, d in enumerate(data):
        window.acquire()
        sent.append(time.perf_counter())
        yield pb.VideoFrame(frame_data=d, format=fmt, width=w, height=h, frame_number=i, timestamp_ms=33 * i)


def through_service(stub, kind: str, fmt: str, data: list, in_flight: int, facade=None) -> tuple[float, list, float]:
    """(frames per second, per-frame round trips in s, facade CPU s per frame) for one stream."""
    window = threading.Semaphore(in_flight)
    sent: list = []
    got = []
    call = getattr(stub, METHODS[kind])
    cpu0 = sum(facade.cpu_times()[:2]) if facade is not None else 0.0
    t0 = time.perf_counter()
    for i, resp in enumerate(call(_requests(data, fmt, window, sent), timeout=600)):
        got.append(time.perf_counter())
        assert resp.frame_number == i, "a frame was dropped or reordered"
        window.release()
    total = time.perf_counter() - t0
    assert len(got) == len(data), f"{len(got)} of {len(data)} frames answered"
    cpu = (sum(facade.cpu_times()[:2]) - cpu0) / len(got) if facade is not None else float("nan")
    return len(got) / total, [g - s for g, s in zip(got, sent)], cpu


def _pct(samples, q) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def _facade_process(svc):
    import psutil
    if svc is None:
        return None
    for child in psutil.Process(svc.proc.pid).children(recursive=True):
        try:
            if "facade.server" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def _fps_row(name: str, fmt: str, kind: str, n: int, fps: float, fps_base: float, via: str, note: str) -> dict:
    ratio = fps / fps_base
    goal = GOALS[kind] if fmt in FORMAT_GOALS and via == "service" else None
    return {"bench": "vision", "metric": f"{name} FPS via {via} vs in-process ({fmt})",
            "value": round(fps, 1), "baseline": round(fps_base, 1), "ratio": round(ratio, 3),
            "goal": f">= {goal}" if goal else "", "unit": "fps",
            "note": (("met; " if ratio >= goal else "NOT met; ") if goal else "") + note}


def _latency_rows(name: str, via: str, rtt: list, base: list) -> list:
    rows = []
    for q in (50, 99):
        added = _pct(rtt, q) - _pct(base, q)
        rows.append({"bench": "vision", "metric": f"{name} added latency p{q} ({via} round trip - in-process)",
                     "value": round(added, 3), "baseline": round(_pct(base, q), 3), "ratio": None,
                     "goal": "", "unit": "ms", "note": f"rgb, round trip p{q} {_pct(rtt, q):.2f} ms, 1 frame in flight"})
    return rows


def _stub(address: str):
    import grpc
    from protos import ml_inference_pb2_grpc as pbg
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20),
                                                      ("grpc.max_receive_message_length", 64 * 2**20)])
    return channel, pbg.MediapipeServiceStub(channel)


def run(quick: bool = True, address: str | None = None, frames_per_pass: int | None = None,
        peer: bool | None = None) -> list:
    """`frames_per_pass` (tests) overrides the frame count of each pass: rows with the same shape, fast,
    numbers too noisy to judge by. With `address` (a running service) the facade's CPU is not measured.
    `peer` (default: when this run starts the service) also measures the single-process peer
    (bench/peers/single_process.py) on the same frames: its rows say "via single-process peer"."""
    frames = load_frames()
    n, warmup = (120, 20) if quick else (600, 50)
    if frames_per_pass:
        n, warmup = frames_per_pass, min(warmup, frames_per_pass)
    data = {fmt: payloads(fmt, frames, n + warmup) for fmt in FORMATS}
    if peer is None:
        peer = address is None
    svc = other = None
    if address is None:
        from tests.service import start_service
        svc = start_service(args=["--pools", "vision", "--worker-threads", "2"], wait_service="ml.MediapipeService")
        address = svc.address
    facade = _facade_process(svc)
    rows = []
    channels = []
    try:
        channel, stub = _stub(address)
        channels.append(channel)
        peer_stub = None
        if peer:
            from bench.peers.launch import start_peer
            other = start_peer("vision")
            channel, peer_stub = _stub(other.address)
            channels.append(channel)
        raw_bytes = W * H * 3
        for fmt in FORMATS:
            size = float(np.mean([len(d) for d in data[fmt][warmup:]]))
            rows.append({"bench": "vision", "metric": f"bytes per frame ({fmt})", "value": round(size),
                         "baseline": raw_bytes, "ratio": round(size / raw_bytes, 4), "goal": "", "unit": "bytes",
                         "note": f"640x480 gesture frames; baseline raw rgb"
                                 + {"h264": ", libx264 zerolatency crf 18", "jpeg": ", quality 90"}.get(fmt, "")})
        for kind in ("face", "pose"):
            name = "face_detection" if kind == "face" else "pose"
            cpu_rgb = None
            for fmt in FORMATS:
                through_service(stub, kind, fmt, data[fmt][:warmup], 1)          # warm the worker
                if peer_stub is not None:
                    through_service(peer_stub, kind, fmt, data[fmt][:warmup], 1)
                turns = {"base": [], "svc": [], "cpu": [], "peer": []}
                base: list = []
                for _ in range(1 if frames_per_pass else REPEATS):   # in turns: load bursts hit every side
                    times = in_process(kind, fmt, data[fmt], warmup)
                    base += times
                    turns["base"].append(1.0 / float(np.mean(times)))
                    fps, _, cpu = through_service(stub, kind, fmt, data[fmt][:n], IN_FLIGHT, facade)
                    turns["svc"].append(fps)
                    turns["cpu"].append(cpu)
                    if peer_stub is not None:
                        turns["peer"].append(through_service(peer_stub, kind, fmt, data[fmt][:n], IN_FLIGHT)[0])
                fps_base, fps_svc, cpu = (float(np.median(turns[k])) for k in ("base", "svc", "cpu"))
                note = (f"{METHODS[kind]} 640x480 {fmt}, n={n}, {IN_FLIGHT} in flight; in-process = "
                        + ("the same stream handler on this thread (multi-person path)" if kind == "pose" else
                           f"{'model' if fmt == 'rgb' else fmt + ' decode + model'}"))
                if len(turns["base"]) > 1:
                    note += f"; medians of {len(turns['base'])} turns (in-process, service, peer)"
                fps_peer = None
                if peer_stub is not None:
                    fps_peer = float(np.median(turns["peer"]))
                    note += f"; single-process peer {fps_peer / fps_base:.3f}"
                rows.append(_fps_row(name, fmt, kind, n, fps_svc, fps_base, "service", note))
                if fps_peer is not None:
                    rows.append(_fps_row(name, fmt, kind, n, fps_peer, fps_base, "single-process peer",
                                         f"{METHODS[kind]} 640x480 {fmt}, n={n}, {IN_FLIGHT} in flight; one grpc.aio "
                                         f"process, the worker's handlers on a thread pool; ours {fps_svc / fps_base:.3f}"))
                if cpu == cpu:   # measured (a service started here)
                    cpu_rgb = cpu if fmt == "rgb" else cpu_rgb
                    rows.append({"bench": "vision", "metric": f"{name} facade CPU per frame ({fmt})",
                                 "value": round(cpu * 1000, 3),
                                 "baseline": round(cpu_rgb * 1000, 3) if cpu_rgb else None,
                                 "ratio": round(cpu / cpu_rgb, 3) if cpu_rgb else None, "goal": "",
                                 "unit": "ms CPU", "note": "facade process user+sys over the throughput run; "
                                                       "baseline: the same for raw rgb"})
                if fmt == "rgb":
                    _, rtt, _ = through_service(stub, kind, fmt, data[fmt][:n], 1)
                    rows += _latency_rows(name, "service", rtt, base)
                    if peer_stub is not None:
                        _, rtt, _ = through_service(peer_stub, kind, fmt, data[fmt][:n], 1)
                        rows += _latency_rows(name, "single-process peer", rtt, base)
    finally:
        for channel in channels:
            channel.close()
        if other is not None:
            other.stop()
        if svc is not None:
            svc.stop()
    return rows


if __name__ == "__main__":
    for row in run(quick="--full" not in sys.argv):
        print(row)
