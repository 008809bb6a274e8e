"""Running modes of the vision streams (MediaPipe Tasks' names): VIDEO by default (every frame answered, in
order; the facade stops reading a stream whose frames in flight reach their bound, so gRPC flow control
makes the client's writes wait), LIVE_STREAM when the client asks (`running-mode: live_stream` call
metadata, or `running_mode` in the first frame's metadata): the oldest waiting frame is dropped beyond
`max_pending`, and every drop is counted in pythonml.v1.Stats and the stream's trailing metadata.

In-process tests drive the real pass-through handler for every bidi route against a broker that answers
only when told (exact counts); the rest runs the real service (`--pools vision`) with real frames from
tests/assets, stopping the vision worker (SIGSTOP) where a count must not depend on its speed.
"""
from __future__ import annotations

import asyncio
import os
import time

import cv2
import grpc
import numpy as np
import pytest

from facade.budget import ByteBudget
from facade.passthrough import DEFAULT_MAX_PENDING, DEFAULT_PIPELINE_DEPTH, PassThrough
from facade.routes import BIDI, ROUTES, ROUTES_BY_PATH, message_class, method_descriptor, shape_of
from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.passthrough_fakes import Aborted, Broker, Context, Source, settle
from tests.service import PeakRSS, child_process, start_service

MiB = 2**20
ASSETS = os.path.join(os.path.dirname(__file__), "assets")
LIVE = (("running-mode", "live_stream"),)


# ------------------------------------------------------------------------------ in-process helpers
def numbered(route, **meta):
    """Messages of the route's request type carrying their index as frame_number (and 64x48 rgb)."""
    cls = message_class(method_descriptor(route.service, route.method).input_type)

    def make(n):
        msg = cls(frame_number=n)
        setattr(msg, route.frame_field, b"\1" * (64 * 48 * 3))
        if "metadata" in cls.DESCRIPTOR.fields_by_name:
            msg.metadata.update(meta)
        return msg
    return cls, make


async def run_stream(route, count, context, **meta):
    """Pull a burst until the facade stops reading (the broker answers nothing yet), then answer."""
    broker = Broker()
    pt = PassThrough(broker, ByteBudget(1024 * MiB))
    cls, make = numbered(route, **meta)
    src = Source(make, count)
    replies: list = []

    async def consume():
        async for r in pt.handler(route).stream_stream(src, context):
            replies.append(cls.FromString(r).frame_number)
    task = asyncio.ensure_future(consume())
    await settle(src)
    held = (src.pulled, broker.sent, pt.dropped_frames)
    broker.answer.set()
    await task
    return held, replies, pt


MP_STREAMS = [r for r in ROUTES if r.service == "ml.MediapipeService"
              and shape_of(method_descriptor(r.service, r.method)) == BIDI]


# ---------------------------------------------------------------------------------- in-process
def test_every_mediapipe_stream_defaults_to_video_mode():
    assert len(MP_STREAMS) == 13
    held_frames = DEFAULT_PIPELINE_DEPTH + DEFAULT_MAX_PENDING + 1   # in flight, waiting, in the reader's hands
    for route in MP_STREAMS:
        (pulled, sent, dropped), replies, pt = asyncio.run(run_stream(route, 30, Context()))
        # the reader stopped at its bound: the client's further writes wait on flow control
        assert (pulled, sent, dropped) == (held_frames, DEFAULT_PIPELINE_DEPTH, 0), route.method
        assert replies == list(range(30)), route.method
        assert pt.dropped_frames == 0 and pt.budget.used == 0


def test_video_mode_keeps_max_pending_frames_waiting_when_asked():
    route = ROUTES_BY_PATH["ml.MediapipeService/StreamPoseTracking"]
    (pulled, _, dropped), replies, _ = asyncio.run(
        run_stream(route, 30, Context([("running-mode", "VIDEO")]), max_pending="8"))
    assert (pulled, dropped) == (DEFAULT_PIPELINE_DEPTH + 8 + 1, 0)
    assert replies == list(range(30))


@pytest.mark.parametrize("how", ["call metadata", "first frame running_mode", "first frame running-mode"])
def test_live_stream_drops_the_oldest_and_counts_every_drop(how):
    route = ROUTES_BY_PATH["ml.MediapipeService/StreamHandTracking"]
    context = Context(LIVE if how == "call metadata" else [])
    meta = {"max_pending": "1"}
    if how != "call metadata":
        meta[how.split()[-1]] = "Live_Stream"
    (pulled, sent, dropped), replies, pt = asyncio.run(run_stream(route, 30, context, **meta))
    assert pulled == 30 and sent == DEFAULT_PIPELINE_DEPTH      # read everything, nothing waited
    assert len(replies) == 30 - dropped and dropped >= 30 - DEFAULT_PIPELINE_DEPTH - 1
    assert replies == sorted(replies) and replies[-1] == 29      # in order, the newest kept
    assert pt.dropped_frames == dropped
    assert context.trailing == (("dropped-frames", str(dropped)),)


def test_call_metadata_and_frame_metadata_must_agree():
    route = ROUTES_BY_PATH["ml.MediapipeService/StreamFaceDetection"]
    with pytest.raises(Aborted) as err:
        asyncio.run(run_stream(route, 3, Context([("running-mode", "video")]), running_mode="live_stream"))
    code, message = err.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "video" in message and "live_stream" in message and "running-mode" in message


@pytest.mark.parametrize("where", ["call", "frame"])
def test_an_unknown_running_mode_is_invalid_argument(where):
    route = ROUTES_BY_PATH["ml.MediapipeService/StreamFaceDetection"]
    context = Context([("running-mode", "image")] if where == "call" else [])
    meta = {"running_mode": "fast"} if where == "frame" else {}
    with pytest.raises(Aborted) as err:
        asyncio.run(run_stream(route, 3, context, **meta))
    code, message = err.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'video'" in message and "'live_stream'" in message, message


def test_audio_refuses_live_stream():
    route = ROUTES_BY_PATH["pythonml.v1.Speech/StreamTranscribe"]

    async def main():
        pt = PassThrough(Broker(), ByteBudget(1024 * MiB))
        src = Source(lambda n: X.AudioChunk(pcm=b"\0" * 3200, sample_rate=16000), 3)
        async for _ in pt.handler(route).stream_stream(src, Context(LIVE)):
            pass
    with pytest.raises(Aborted) as err:
        asyncio.run(main())
    code, message = err.value.args
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "never drop" in message, message


# ------------------------------------------------------------------------------- the real service
def rgb(rel: str) -> np.ndarray:
    return np.ascontiguousarray(cv2.cvtColor(cv2.imread(os.path.join(ASSETS, rel)), cv2.COLOR_BGR2RGB))


GESTURES = [rgb(f"video/gestures_part1/frame_{i:02d}.png") for i in range(21)]


def frame(img: np.ndarray, n: int, **meta) -> ML.VideoFrame:
    h, w = img.shape[:2]
    return ML.VideoFrame(frame_data=img.tobytes(), format="rgb", width=w, height=h, frame_number=n,
                         timestamp_ms=33 * n, metadata=meta)


class Burst:
    """A client iterator that yields every frame at once; counts what gRPC took from it."""

    def __init__(self, frames):
        self.frames, self.sent = frames, 0

    def __iter__(self):
        for f in self.frames:
            self.sent += 1
            yield f


def dropped(svc) -> int:
    return XG.StatsStub(svc.channel()).GetStats(X.StatsRequest(), timeout=30).dropped_stream_frames


def wait_until_still(read, limit_s: float = 60.0) -> int:
    """Poll read() until it stops changing for a second (or limit_s passes); returns its last value."""
    last, end = None, time.time() + limit_s
    while time.time() < end:
        now = read()
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    return last


@pytest.fixture(scope="module")
def svc():
    # a long heartbeat timeout: some tests stop the vision worker on purpose
    with start_service(["--pools", "vision", "--heartbeat-timeout-s", "600"],
                       wait_service="ml.MediapipeService") as s:
        yield s


@pytest.fixture(scope="module")
def stub(svc):
    return MLG.MediapipeServiceStub(svc.channel())


@pytest.mark.integration
@pytest.mark.parametrize("method,count", [("StreamHandTracking", 22), ("StreamFaceDetection", 30),
                                          ("StreamPoseTracking", 40)])
def test_a_burst_is_answered_frame_after_frame(svc, stub, method, count):
    before = dropped(svc)
    burst = Burst([frame(GESTURES[n % len(GESTURES)], n) for n in range(count)])
    out = list(getattr(stub, method)(iter(burst), timeout=300))
    print(f"FIGURE {method}: burst of {count} -> {len(out)} answers")
    assert [r.frame_number for r in out] == list(range(count))
    assert dropped(svc) == before
    if method == "StreamHandTracking":   # real answers, not empty ones: the victory sign of frames 2-11
        names = [h.gestures[0].name for r in out[2:12] for h in r.hands if h.gestures]
        assert names.count("Victory") >= 8, names


@pytest.mark.integration
def test_live_stream_drops_are_counted_in_stats_and_trailers(svc, stub):
    count = 22
    before = dropped(svc)
    worker = child_process(svc, "workers.vision_worker")
    worker.suspend()   # nothing is answered: the facade holds 2 frames in flight and max_pending=1 waiting
    try:
        call = stub.StreamHandTracking(iter([frame(GESTURES[n % 21], n, max_pending="1") for n in range(count)]),
                                       timeout=300, metadata=LIVE)
        held = DEFAULT_PIPELINE_DEPTH + 1
        end = time.time() + 60
        while dropped(svc) - before < count - held and time.time() < end:
            time.sleep(0.05)
    finally:
        worker.resume()
    out = [r.frame_number for r in call]
    drops = dropped(svc) - before
    print(f"FIGURE live_stream max_pending=1, burst of {count}: {len(out)} answers {out}, {drops} dropped")
    assert 0 < len(out) <= held and out == sorted(out) and out[-1] == count - 1
    assert drops == count - len(out)
    assert dict(call.trailing_metadata())["dropped-frames"] == str(drops)


@pytest.mark.integration
def test_facade_memory_stays_bounded_under_a_200_frame_burst(svc, stub):
    img = rgb("images/basketball1.png")          # 640x480
    count, frame_mib = 200, img.nbytes / MiB
    burst = Burst([frame(img, n) for n in range(count)])
    proc = child_process(svc, "facade.server")
    base = proc.memory_info().rss
    worker = child_process(svc, "workers.vision_worker")
    worker.suspend()   # nothing is answered until the client has been pushed back
    try:
        peak = PeakRSS(proc)
        peak.start()
        call = stub.StreamPoseTracking(iter(burst), timeout=600)
        sent = wait_until_still(lambda: burst.sent)
        grown = (peak.stop() - base) / MiB
    finally:
        worker.resume()
    # what the facade may hold of one VIDEO stream: the frames in flight (plus their shared-memory
    # copies), max_pending waiting, one in the reader's hands, one being received by gRPC core and its
    # 1 MiB read-ahead; plus 64 MiB for the allocator. Unbounded, it would hold all 200 (176 MiB).
    held = 2 * DEFAULT_PIPELINE_DEPTH + DEFAULT_MAX_PENDING + 2
    bound = held * frame_mib + 1 + 64
    print(f"FIGURE 200 x 640x480 rgb burst: client wrote {sent} before waiting; facade RSS "
          f"{base / MiB:.0f} MiB + {grown:.0f} MiB (bound {bound:.0f})")
    assert sent < count, "the client's writes never waited"
    assert grown < bound, f"facade grew by {grown:.0f} MiB (bound {bound:.0f} MiB)"
    assert [r.frame_number for r in call] == list(range(count))


@pytest.mark.integration
def test_an_unknown_running_mode_is_refused_by_the_service(stub):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFaceDetection(iter([frame(GESTURES[0], 0)]), timeout=60,
                                      metadata=[("running-mode", "realtime")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'video'" in err.value.details() and "'live_stream'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFaceDetection(iter([frame(GESTURES[0], 0, running_mode="image")]), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "running_mode" in err.value.details()
