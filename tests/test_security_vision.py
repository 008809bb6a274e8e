"""Security rows of the vision worker: streams cancelled mid-frame end cleanly (no leaked MediaPipe
instances, threads or memory; no "Task was destroyed but it is pending" in the facade), and image
dimensions are read from the real header wherever it sits in the file before anything is decoded
(a JPEG whose SOF hides behind 128 KB of padding; a header that cannot be read is refused)."""
from __future__ import annotations

import argparse
import os
import glob
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pytest

from protos import ml_inference_pb2 as pb
from protos import ml_inference_pb2_grpc as pbg
from common import wire as P
from tests.service import PYTHON, ROOT, pool_process, settle, start_service
from workers.base import Worker
from workers.context import WorkerError
from workers.vision import frames, image_header

ASSETS = os.path.join(os.path.dirname(__file__), "assets")


def read_asset(rel: str) -> bytes:
    with open(os.path.join(ASSETS, rel), "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------- row 7
def cancelled_stream(stub, method: str, frame: pb.VideoFrame, delay: float) -> None:
    """Open a bidi stream, send one frame, cancel the call `delay` seconds after the frame left."""
    sent, release = threading.Event(), threading.Event()

    def requests():
        yield frame
        sent.set()
        release.wait(30)   # keep the request side open: the call ends by cancellation, not half-close

    call = getattr(stub, method)(requests(), timeout=60)
    try:
        sent.wait(30)
        time.sleep(delay)
        call.cancel()
    finally:
        release.set()


def storm(stub, frame: pb.VideoFrame, n: int, seed: int) -> None:
    """n streams, 6 at a time (more than the worker's 2 handler threads, so frames also wait in the broker),
    cancelled at random points: before the frame reaches the worker, while it runs, after its reply."""
    rng = random.Random(seed)
    jobs = [(rng.choice(("StreamFaceDetection", "StreamFaceDetection", "StreamFaceMesh")),
             rng.choice((0.0, rng.uniform(0, 0.03), rng.uniform(0.03, 0.15)))) for _ in range(n)]
    with ThreadPoolExecutor(6) as ex:
        list(ex.map(lambda job: cancelled_stream(stub, job[0], frame, job[1]), jobs))


class Instance:
    """Stands for a MediaPipe solution kept in a stream's state: records whether it was closed while a
    frame of its stream was still running."""

    def __init__(self, running: threading.Event):
        self.running = running
        self.closed = threading.Event()
        self.closed_while_running = False

    def close(self):
        self.closed_while_running = self.running.is_set()
        self.closed.set()


class StreamHarness:
    """A worker base without sockets or processes: `_dispatch` fed by hand, replies read from its queue."""

    def __init__(self):
        args = argparse.Namespace(device="cpu", worker_id="w-test", options_json="{}", shm_fd=-1,
                                  shm_slots=0, shm_slot_size=0)
        self.worker = Worker(args)
        self.running, self.release = threading.Event(), threading.Event()
        self.calls: list[str] = []
        self.instances: list[Instance] = []
        self.worker._handlers = {"m": self.handler}
        self.ex = ThreadPoolExecutor(2)

    def handler(self, ctx):
        self.calls.append(ctx.request_id)
        if "inst" not in ctx.stream_state:
            ctx.stream_state["inst"] = Instance(self.running)
            self.instances.append(ctx.stream_state["inst"])
        self.running.set()
        try:
            self.release.wait(30)
        finally:
            self.running.clear()
        return b"done"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release.set()       # a failed assertion must not leave a handler thread waiting
        self.ex.shutdown(wait=True)

    def send(self, command: bytes, **header):
        self.worker._dispatch(self.ex, command, header, [b""] if command == P.REQUEST else [])

    def drain(self, free_threads: int = 2) -> None:
        """Return once every task submitted so far has ended, `free_threads` of the executor's 2 threads
        not being held by a blocked handler: tasks start in FIFO order, so when one barrier task holds each
        free thread at the same moment, everything queued before them has finished."""
        barrier = threading.Barrier(free_threads, timeout=30)
        for f in [self.ex.submit(barrier.wait) for _ in range(free_threads)]:
            f.result(30)

    def replies(self) -> dict:
        out = {}
        while not self.worker._outq.empty():
            command, header, _ = P.decode(self.worker._outq.get_nowait(), P.WORKER_COMMANDS)
            out[header["id"]] = (command, header.get("code"), header.get("message"))
        return out


def test_stream_state_is_closed_after_its_running_frame_not_under_it():
    with StreamHarness() as h:
        h.send(P.REQUEST, id="r1", method="m", stream="s1")
        assert h.running.wait(30)
        h.send(P.REQUEST, id="r2", method="m", stream="s1")     # queued behind r1
        h.send(P.CANCEL, id="r1")
        h.send(P.STREAM_CLOSE, stream="s1")
        h.drain(free_threads=1)   # a close handed to the other handler thread would have run by now
        (inst,) = h.instances
        assert not inst.closed.is_set()
        h.release.set()
        h.ex.shutdown(wait=True)
    assert inst.closed.is_set() and not inst.closed_while_running
    assert h.calls == ["r1"]          # the queued frame of the closed stream never ran
    replies = h.replies()
    assert replies["r1"][:2] == (P.ERROR, "CANCELLED") and replies["r2"][:2] == (P.ERROR, "CANCELLED")
    assert not h.worker._streams and not h.worker._stream_queues and not h.worker._close_after


def test_frame_for_a_closed_stream_is_refused_and_opens_no_state():
    with StreamHarness() as h:
        h.release.set()
        h.send(P.REQUEST, id="r1", method="m", stream="s1")
        h.drain()
        h.send(P.STREAM_CLOSE, stream="s1")    # idle stream: closed at once
        h.drain()
        (inst,) = h.instances
        assert inst.closed.is_set()
        h.send(P.REQUEST, id="late", method="m", stream="s1")
        h.drain()
    assert h.calls == ["r1"] and len(h.instances) == 1 and "s1" not in h.worker._streams
    replies = h.replies()
    assert replies["r1"][0] == P.FINAL
    code, message = replies["late"][1:]
    assert code == "CANCELLED" and "stream s1 was already closed" in message


def test_memory_of_closed_streams_is_bounded():
    from workers.base import CLOSED_STREAMS_KEPT
    with StreamHarness() as h:
        for n in range(CLOSED_STREAMS_KEPT + 500):
            h.send(P.STREAM_CLOSE, stream=f"s{n}")
        assert len(h.worker._closed_streams) == CLOSED_STREAMS_KEPT
        h.release.set()
        h.send(P.REQUEST, id="late", method="m", stream=f"s{CLOSED_STREAMS_KEPT + 499}")   # the newest: refused
        h.drain()
    assert h.calls == [] and h.replies()["late"][1] == "CANCELLED"


@pytest.fixture(scope="module")
def vision_service():
    with start_service(["--pools", "vision", "--worker-threads", "2"], wait_service="ml.MediapipeService") as svc:
        yield svc


@pytest.mark.integration
@pytest.mark.slow
def test_cancelled_streams_leak_no_memory_threads_or_tasks(vision_service):
    svc = vision_service
    ch = svc.channel()
    stub = pbg.MediapipeServiceStub(ch)
    frame = pb.VideoFrame(frame_data=read_asset("images/grace_hopper.jpg"), format="jpeg")
    # sanity: the frame is a real face, streams work end to end
    (r,) = list(stub.StreamFaceDetection(iter([frame]), timeout=60))
    assert len(r.faces) == 1
    proc = pool_process(ch, "vision")
    # warm-up: lazily built models, handler threads, malloc arenas reaching their working size
    for seed in (1, 2):
        storm(stub, frame, 300, seed=seed)
    rss0, threads0 = settle(ch, proc)
    storm(stub, frame, 900, seed=3)
    rss1, threads1 = settle(ch, proc)
    print(f"vision worker after warm-up: {rss0:.0f} MB, {threads0} threads; "
          f"after 900 cancelled streams: {rss1:.0f} MB, {threads1} threads")
    # every MediaPipe graph runs its own threads, so one instance left open shows here (the old code:
    # 69 -> 119 threads over these 900 streams); the worker's own threads all exist after the warm-up
    assert threads1 == threads0
    assert rss1 <= rss0 * 1.05, f"RSS grew from {rss0:.0f} to {rss1:.0f} MB"
    # the worker still serves
    (r,) = list(stub.StreamFaceMesh(iter([frame]), timeout=60))
    assert len(r.faces) == 1
    assert pool_process(ch, "vision").pid == proc.pid
    log = svc.log()
    assert "Task was destroyed but it is pending" not in log
    assert "CalculatorGraph::Run() failed" not in log
    assert "_output_stream_type_info" not in log


# ---------------------------------------------------------------------------------------------- row 8
def small_jpeg(w: int = 64, h: int = 48, **params) -> bytes:
    bgr = cv2.resize(cv2.imread(os.path.join(ASSETS, "images", "grace_hopper.jpg")), (w, h))
    ok, buf = cv2.imencode(".jpg", bgr, [k for kv in params.items() for k in (getattr(cv2, kv[0]), kv[1])])
    assert ok
    return buf.tobytes()


def segments(jpeg: bytes):
    """(offset, marker, length) of each marker segment up to SOS (cv2's output: no stray bytes)."""
    i = 2
    while True:
        marker, length = jpeg[i + 1], struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        yield i, marker, length
        if marker == 0xDA:
            return
        i += 2 + length


def with_sof_size(jpeg: bytes, w: int, h: int) -> bytes:
    for i, marker, _ in segments(jpeg):
        if marker in (0xC0, 0xC1, 0xC2):
            return jpeg[:i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9:]
    raise AssertionError("no SOF")


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def padding(total: int) -> bytes:
    """COM and APP15 segments of `total` payload bytes (65,533 at most each)."""
    out, k = b"", 0
    while total > 0:
        n = min(total, 65533)
        out += segment(0xFE if k % 2 == 0 else 0xEF, bytes([k % 251]) * n)
        total, k = total - n, k + 1
    return out


def after_soi(jpeg: bytes, extra: bytes) -> bytes:
    return jpeg[:2] + extra + jpeg[2:]


def padded_bomb() -> bytes:
    """The reported file: a real small JPEG, 128 KB of padding segments, then its SOF declaring
    20000x20000 (400 Mpx, 1.2 GB once decoded)."""
    return after_soi(with_sof_size(small_jpeg(), 20000, 20000), padding(128 * 1024))


def assets(*patterns: str) -> list[str]:
    return sorted(p for pat in patterns for p in glob.glob(os.path.join(ASSETS, "**", pat), recursive=True))


@pytest.mark.parametrize("path", assets("*.jpg", "*.png")[:12], ids=os.path.basename)
def test_header_size_equals_the_decoded_size_on_real_photos(path):
    data = read_asset(os.path.relpath(path, ASSETS))
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    fmt = frames.sniff(data)
    expected = (img.shape[1], img.shape[0])
    assert image_header.image_size(data, fmt) == expected
    assert image_header.image_size(memoryview(data), fmt) == expected           # shared memory
    assert image_header.image_size(np.frombuffer(data, np.uint8), fmt) == expected


def test_header_found_behind_padding_thumbnails_and_fill_bytes():
    base = small_jpeg(96, 72)
    progressive = small_jpeg(80, 60, IMWRITE_JPEG_PROGRESSIVE=1)
    thumb = small_jpeg(16, 12)   # an embedded JPEG (EXIF-style thumbnail) with its own SOF
    cases = {
        "padded 128 KB": (after_soi(base, padding(128 * 1024)), (96, 72)),
        "padded 1 MB": (after_soi(base, padding(2**20)), (96, 72)),
        "progressive (SOF2)": (after_soi(progressive, padding(70000)), (80, 60)),
        "thumbnail in APP1": (after_soi(base, segment(0xE1, b"Exif\0\0" + thumb)), (96, 72)),
        "fill bytes and stray bytes": (after_soi(base, b"\xff\xff\xff" + segment(0xFE, b"x") + b"\x00\x17"), (96, 72)),
    }
    for name, (data, size) in cases.items():
        assert image_header.image_size(data, "jpeg") == size, name
        out = frames.decode(data, "jpeg", what=name)        # and the decoder agrees
        assert (out.shape[1], out.shape[0]) == size, name


def test_padded_bomb_refused_before_decoding(monkeypatch):
    data = padded_bomb()
    assert 128 * 1024 < len(data) < 140 * 1024
    assert image_header.image_size(data, "jpeg") == (20000, 20000)
    monkeypatch.setattr(frames.cv2, "imdecode", lambda *a: pytest.fail("decoded an image whose size was refused"))
    with pytest.raises(WorkerError) as ei:
        frames.decode(data, "jpeg", what="frame 3")
    assert ei.value.code == "INVALID_ARGUMENT"
    assert ei.value.message == (f"frame 3 (jpeg, {len(data)} bytes): the jpeg header declares 20000x20000, above the "
                                f"limit of 16384 px per side and 50000000 pixels")


def unreadable_jpegs() -> dict:
    base = small_jpeg()
    sos = [i for i, m, _ in segments(base) if m == 0xDA][0]
    sof = [i for i, m, _ in segments(base) if m == 0xC0][0]
    no_sof = base[:2] + b"".join(segment(m, base[i + 4:i + 2 + n]) for i, m, n in segments(base) if m not in (0xC0, 0xDA))
    return {
        "no SOF before the end": (base[:2] + padding(100000), "no frame header (SOF marker) before the end"),
        "end of image first": (base[:2] + padding(70000) + b"\xff\xd9" + base[2:], "end of image at byte"),
        "scan before SOF": (no_sof + base[sos:], "scan data (SOS) at byte"),
        "segment past the end": (base[:2] + b"\xff\xfe\xff\xf0" + b"x" * 1000, "declares 65520 bytes, past the end"),
        "cut-off SOF": (base[:sof + 6], "past the end"),
        "second SOI": (base[:2] + b"\xff\xd8" + base[2:], "a second start-of-image marker"),
        "too many segments": (base[:2] + segment(0xFE, b"") * 5000 + base[2:], "more than 4096 marker segments"),
    }


@pytest.mark.parametrize("name", list(unreadable_jpegs()))
def test_jpeg_without_a_readable_sof_is_refused_never_decoded_blind(name, monkeypatch):
    data, reason = unreadable_jpegs()[name]
    monkeypatch.setattr(frames.cv2, "imdecode", lambda *a: pytest.fail("decoded blind"))
    with pytest.raises(WorkerError) as ei:
        frames.decode(data, "jpeg", what="image")
    assert ei.value.code == "INVALID_ARGUMENT"
    assert ei.value.message.startswith(f"image (jpeg, {len(data)} bytes): the jpeg data could not be decoded: ")
    assert reason in ei.value.message


def test_png_size_comes_from_the_first_chunk_only():
    ok, png = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))
    png = png.tobytes()
    assert image_header.image_size(png, "png") == (40, 30)
    text = b"tEXt" + b"k\0v"
    chunk = struct.pack(">I", 3) + text + struct.pack(">I", zlib.crc32(text))
    moved = png[:8] + chunk + png[8:]         # IHDR no longer first: libpng refuses it, so do we
    with pytest.raises(WorkerError) as ei:
        frames.decode(moved, "png", what="image")
    assert ei.value.code == "INVALID_ARGUMENT" and "the first PNG chunk is not a 13-byte IHDR" in ei.value.message


def test_vision_worker_caps_opencv_decoder_too():
    """Second line: in the vision worker process OpenCV's own header pass refuses an image above the pixel
    limit (OPENCV_IO_MAX_IMAGE_PIXELS is set before cv2 is imported), even if called directly."""
    bomb = with_sof_size(small_jpeg(), 8000, 8000)     # 64 Mpx: above 50 Mpx, under every side limit
    code = ("import sys, numpy as np, workers.vision_worker, cv2\n"
            "data = sys.stdin.buffer.read()\n"
            "try:\n"
            "    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)\n"
            "    print('decoded', None if img is None else img.shape)\n"
            "except cv2.error as exc:\n"
            "    print('refused', 'CV_IO_MAX_IMAGE_PIXELS' in str(exc))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([PYTHON, "-c", code], input=bomb, capture_output=True, cwd=ROOT, env=env, timeout=120)
    assert out.stdout.decode().strip() == "refused True", out.stderr.decode()[-2000:]


@pytest.mark.integration
@pytest.mark.slow
def test_padded_jpeg_bomb_refused_by_the_service(vision_service):
    ch = vision_service.channel()
    stub = pbg.MediapipeServiceStub(ch)
    proc = pool_process(ch, "vision")
    rss0 = proc.memory_info().rss / 2**20
    data = padded_bomb()
    limit = "above the limit of 16384 px per side and 50000000 pixels"
    with pytest.raises(grpc.RpcError) as ei:
        stub.DetectFaces(pb.ImageRequest(image_data=data, format="jpeg"), timeout=60)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"image (jpeg, {len(data)} bytes): the jpeg header declares 20000x20000, {limit}" in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:   # sniffed (no format), in a stream
        list(stub.StreamFaceDetection(iter([pb.VideoFrame(frame_data=data, frame_number=4)]), timeout=60))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"frame 4 (jpeg, {len(data)} bytes): the jpeg header declares 20000x20000, {limit}" in ei.value.details()
    # nothing was decoded: 400 Mpx would have taken the worker up by 1,144 MB (reported: 319 -> 2,610 MB)
    assert proc.memory_info().rss / 2**20 < rss0 + 200
    assert pool_process(ch, "vision").pid == proc.pid
    r = stub.DetectFaces(pb.ImageRequest(image_data=read_asset("images/grace_hopper.jpg"), format="jpeg"), timeout=60)
    assert len(r.faces) == 1
