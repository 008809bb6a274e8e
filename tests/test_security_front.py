"""Security rows at the front door: the facade's request bytes are bounded per stream and in total
(facade/budget.py: streams are paced by flow control, unary calls past the budget are refused), the token
is checked before a request body is read, and /metrics needs the token when one is set.

The budget tests drive the real pass-through handlers in-process against a broker that never answers
(exact byte and message counts), then the real service with its vision worker stopped (SIGSTOP, so
nothing is ever answered) to bound the facade's RSS. The facade is found among run.py's children.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest

from facade.budget import STREAM_BYTES, ByteBudget
from facade.passthrough import PassThrough
from facade.routes import ROUTES_BY_PATH
from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.passthrough_fakes import Broker, Context, Source, settle
from tests.service import PeakRSS, child_process, free_port, start_service

MiB = 2**20
TOKEN = "front-door-token"


# ------------------------------------------------------------------------------------- helpers
def frame_source(nbytes: int, max_pending: int = 64, count: int = 10**6) -> Source:
    data = b"\0" * nbytes
    return Source(lambda n: ML.VideoFrame(frame_data=data, format="rgb", width=1, height=1,
                                          metadata={"max_pending": str(max_pending)}), count, nbytes=nbytes)


def bidi_handler(passthrough: PassThrough, path: str):
    return passthrough.handler(ROUTES_BY_PATH[path]).stream_stream


async def consume(agen, replies: list):
    async for r in agen:
        replies.append(r)


async def start_stream(path: str, src: Source, context=None):
    """The real bidi handler of `path` reading `src` against a broker that answers nothing yet, run until
    the handler stops pulling. Returns (broker, pass-through, replies so far, the stream's task)."""
    broker = Broker()
    pt = PassThrough(broker, ByteBudget(1024 * MiB))
    replies: list = []
    task = asyncio.ensure_future(consume(bidi_handler(pt, path)(src, context or Context()), replies))
    await settle(src)
    return broker, pt, replies, task


def stop_worker(svc, module: str) -> int:
    """SIGSTOP the pool's worker (a child of this service's run.py); returns its pid."""
    p = child_process(svc, module, timeout=30)
    assert p.pid > 0 and p.pid != os.getpid()
    os.kill(p.pid, signal.SIGSTOP)
    return p.pid


# ------------------------------------------------------------------------- the budget, in-process
def test_budget_wakes_readers_in_order_and_admits_one_oversized_request():
    async def main():
        b = ByteBudget(10)
        assert b.admit(25)            # nothing held: a single request always fits
        assert not b.admit(1)         # anything more does not
        order = []
        waiters = [asyncio.ensure_future(b.room()) for _ in range(3)]
        for i, w in enumerate(waiters):
            w.add_done_callback(lambda _, i=i: order.append(i))
        await asyncio.sleep(0)
        assert order == [] and b.waits == 3
        b.release(25)
        await asyncio.gather(*waiters)
        assert order == [0, 1, 2] and b.used == 0 and b.refused == 1 and b.peak == 25
    asyncio.run(main())


def test_one_stream_keeps_at_most_max_2_frames_or_16_mib_pending_and_stops_reading():
    async def main():
        src = frame_source(4 * MiB, max_pending=64, count=40)
        broker, pt, replies, task = await start_stream("ml.MediapipeService/StreamFaceDetection", src)
        # VIDEO mode (the default): 2 in flight to the (silent) worker, 16 MiB = 4 frames pending, 1 in the
        # reader's hands waiting for room; nothing dropped, the rest waits on flow control
        assert src.pulled == 7 and broker.sent == 2 and pt.dropped_frames == 0
        assert pt.budget.used == (2 + STREAM_BYTES // (4 * MiB) + 1) * 4 * MiB
        broker.answer.set()
        await task
        assert len(replies) == 40 and pt.budget.used == 0
    asyncio.run(main())


def test_a_live_stream_keeps_at_most_max_2_frames_or_16_mib_pending_and_drops_the_rest():
    async def main():
        src = frame_source(4 * MiB, max_pending=64, count=40)
        context = Context([("running-mode", "live_stream")])
        broker, pt, replies, task = await start_stream("ml.MediapipeService/StreamFaceDetection", src, context)
        # 2 in flight to the (silent) worker, 16 MiB = 4 frames pending, every other one dropped
        assert src.pulled == 40 and broker.sent == 2
        assert pt.budget.used == (2 + STREAM_BYTES // (4 * MiB)) * 4 * MiB
        assert pt.dropped_frames == 40 - 6
        broker.answer.set()
        await task
        assert len(replies) == 6 and pt.budget.used == 0
        assert context.trailing == (("dropped-frames", str(40 - 6)),)
    asyncio.run(main())


def test_audio_stream_never_drops_and_stops_reading_at_its_byte_bound():
    async def main():
        pcm = b"\0" * (4 * MiB)
        src = Source(lambda n: X.AudioChunk(pcm=pcm, sample_rate=16000, metadata={"max_pending": "64"}), 20,
                     nbytes=4 * MiB)
        broker, pt, replies, task = await start_stream("pythonml.v1.Speech/StreamTranscribe", src)
        # 2 in flight + 4 pending (16 MiB) + 1 in the reader's hands waiting for room; nothing dropped
        assert src.pulled == 7 and pt.dropped_frames == 0 and pt.budget.used == 7 * 4 * MiB
        broker.answer.set()
        await task
        assert src.pulled == 20 and len(replies) == 20 + 1  # + the reply to the closing `end` chunk
        assert pt.budget.used == 0
    asyncio.run(main())


def test_streams_stop_pulling_when_the_facade_budget_is_spent():
    async def main():
        pt = PassThrough(Broker(), ByteBudget(32 * MiB))
        sources = [frame_source(4 * MiB) for _ in range(3)]
        handler = bidi_handler(pt, "ml.MediapipeService/StreamFaceDetection")
        tasks = [asyncio.ensure_future(consume(handler(s, Context()), [])) for s in sources]
        await settle(*sources)
        pulled = sum(s.pulled for s in sources)
        # each reader stops once the total reaches 32 MiB: at most one message each beyond it
        assert pt.budget.used <= 32 * MiB + 3 * 4 * MiB
        assert pulled <= 32 // 4 + 3, pulled
        assert pt.budget.waits >= 3
        for t in tasks:   # clients go away: everything they held is released
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert pt.budget.used == 0
    asyncio.run(main())


# ------------------------------------------------------------------------ the real service: RSS
@pytest.mark.integration
def test_big_frames_on_many_streams_stay_within_the_facade_budget():
    budget_mb, frame_mb, streams = 32, 4, 3
    with start_service(["--pools", "vision", "--facade-buffer-mb", str(budget_mb), "--heartbeat-timeout-s", "600"],
                       wait_service=None) as svc:
        worker = stop_worker(svc, "workers.vision_worker")
        try:
            facade = child_process(svc, "facade.server")
            base = facade.memory_info().rss
            peak = PeakRSS(facade, interval=0.01)
            peak.start()
            w, h = 1024, frame_mb * MiB // (1024 * 3)
            data = b"\0" * (w * h * 3)
            sent = [0] * streams
            stop = threading.Event()
            calls = []

            def frames(i):
                while not stop.is_set():
                    sent[i] += 1
                    yield ML.VideoFrame(frame_data=data, format="rgb", width=w, height=h,
                                        metadata={"max_pending": "64"})
            stub = MLG.MediapipeServiceStub(svc.channel())
            for i in range(streams):
                calls.append(stub.StreamFaceDetection(frames(i), timeout=120))
            # send until every client is blocked by flow control (or clearly is not)
            last, end = None, time.time() + 60
            while time.time() < end and sum(sent) < 100:
                time.sleep(1.0)
                if sent == last:
                    break
                last = list(sent)
            grown = (peak.stop() - base) / MiB
            print(f"FIGURE facade RSS {base / MiB:.0f} MiB -> peak +{grown:.0f} MiB; frames sent {sent}")
            # what the facade may hold: the budget, one frame per stream beyond it, per stream one frame
            # being read by gRPC core plus its 1 MiB read-ahead, two frames in flight copied to shared
            # memory; plus 64 MiB for the allocator. Unbounded, the same clients push 64 frames a stream.
            bound = budget_mb + streams * (frame_mb + frame_mb + 1 + 2 * frame_mb) + 64
            assert grown < bound, f"facade grew by {grown:.0f} MiB (bound {bound} MiB); frames sent {sent}"
            assert sum(sent) < 60, f"clients were not pushed back: {sent} frames sent"
        finally:
            os.kill(worker, signal.SIGCONT)
        stop.set()
        for c in calls:
            c.cancel()
        # everything the cancelled streams held was released: a new stream is read frame after frame
        svc.wait_healthy("ml.MediapipeService", timeout=120)
        small = b"\0" * (64 * 64 * 3)
        replies = list(stub.StreamFaceDetection(
            iter([ML.VideoFrame(frame_data=small, format="rgb", width=64, height=64, metadata={"max_pending": "8"})
                  for _ in range(3)]), timeout=60))
        assert len(replies) == 3


@pytest.mark.integration
def test_unary_requests_past_the_budget_are_refused_not_held():
    # 17 MiB: room for 4 requests of 4 MiB and a few bytes each, not for 5
    with start_service(["--pools", "vision", "--facade-buffer-mb", "17", "--heartbeat-timeout-s", "600"],
                       wait_service=None) as svc:
        worker = stop_worker(svc, "workers.vision_worker")
        stub = MLG.MediapipeServiceStub(svc.channel())
        image = b"\1" * (4 * MiB)
        outcomes: list = []

        def detect():
            try:
                stub.DetectFaces(ML.ImageRequest(image_data=image, format="jpeg"), timeout=90)
                return grpc.StatusCode.OK, ""
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
        threads = [threading.Thread(target=lambda: outcomes.append(detect())) for _ in range(8)]
        try:
            for t in threads:
                t.start()
            end = time.time() + 60
            while time.time() < end and len(outcomes) < 4:
                time.sleep(0.05)
            # 4 x 4 MiB fill the 16 MiB budget and wait for the stopped worker; the other 4 are refused
            refused = [d for c, d in outcomes if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert len(refused) == 4 and len(outcomes) == 4, outcomes
            assert "--facade-buffer-mb" in refused[0] and "retry" in refused[0], refused[0]
        finally:
            os.kill(worker, signal.SIGCONT)
        for t in threads:
            t.join()
        # the held requests were answered (the bytes are no image) and released: the next one is admitted
        assert len(outcomes) == 8
        code, details = detect()
        assert code != grpc.StatusCode.RESOURCE_EXHAUSTED, details


# ------------------------------------------------------------------- token before the body is read
@pytest.mark.integration
def test_requests_without_token_are_refused_before_their_body_is_buffered():
    with start_service(["--pools", "fake"], env={"PYTHONML_TOKEN": TOKEN}) as svc:
        facade = child_process(svc, "facade.server")
        base = facade.memory_info().rss
        peak = PeakRSS(facade, interval=0.01)
        peak.start()
        ch = svc.channel()
        big = b"x" * (60 * MiB)
        codes: list = []

        def call(kind: str):
            try:
                if kind == "unary":
                    MLG.MediapipeServiceStub(ch).DetectFaces(ML.ImageRequest(image_data=big), timeout=60)
                elif kind == "server-stream":
                    list(XG.DiagnosticsStub(ch).Echo(X.EchoRequest(pool="fake", payload=big), timeout=60))
                else:
                    list(MLG.MediapipeServiceStub(ch).StreamFaceDetection(
                        iter([ML.VideoFrame(frame_data=big)] * 2), timeout=60))
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        threads = [threading.Thread(target=call, args=(k,)) for k in ["unary", "server-stream", "bidi"] * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        grown = (peak.stop() - base) / MiB
        print(f"FIGURE 12 x 60 MB without token: facade RSS {base / MiB:.0f} MiB -> peak +{grown:.0f} MiB")
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 12
        # per refused call gRPC core may have received the stream's flow-control window, not the body
        assert grown < 100, f"the facade buffered unauthenticated bodies: +{grown:.0f} MiB"
        (r,) = XG.DiagnosticsStub(ch).Echo(X.EchoRequest(pool="fake", payload=b"ok"), timeout=20,
                                           metadata=[("authorization", f"Bearer {TOKEN}")])
        assert r.payload == b"ok"


# ---------------------------------------------------------------------------------------- metrics
def scrape(port: int, token=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.integration
def test_metrics_need_the_token_when_one_is_set_and_listen_on_loopback():
    mport = free_port()
    with start_service(["--pools", "fake", "--metrics-port", str(mport)], env={"PYTHONML_TOKEN": TOKEN}):
        for token in (None, "wrong", ""):
            status, body = scrape(mport, token)
            assert status == 401 and "Authorization: Bearer" in body, (status, body)
            assert "pythonml_worker" not in body
        status, body = scrape(mport, TOKEN)
        assert status == 200 and "pythonml_worker_rss_megabytes{" in body
        with socket.socket() as s:   # same bind address as gRPC: loopback by default
            s.settimeout(1)
            other = socket.gethostbyname(socket.gethostname())
            if not other.startswith("127."):
                assert s.connect_ex((other, mport)) != 0
