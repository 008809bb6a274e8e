"""HF worker trust boundary (DESIGN.md §6b, workers/hf/limits.py): every chat / embeddings / audio size is
refused before any tokenisation or model work with INVALID_ARGUMENT naming the limit, and a caller that
leaves stops its generation, embeddings or transcription within one step / sub-batch, being answered
only once the work stopped. Handlers in-process on tiny random models and all-MiniLM-L6-v2, plus the
real service (--pools hf) for the probe's rows 9 and 10.
"""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from protos import pythonml_pb2 as X
from protos import pythonml_pb2_grpc as XG
from tests.test_hf_fixtures import build_tiny_bert, build_tiny_llama, make_worker
from workers.context import Cancelled, WorkerError, make_test_context
from common import audio as A
from workers.hf import chat as chatmod
from workers.hf import limits

GEN = "ml.TransformersService/GenerateText"
CHAT = "ml.TransformersService/ChatCompletion"
EMB = "ml.TransformersService/GenerateEmbeddings"
MINILM = "all-MiniLM-L6-v2"
WORDS = "the quick brown fox jumps over the lazy dog a journey of a thousand miles".split()
LONG = " ".join(WORDS[i % len(WORDS)] for i in range(7000))[:30000]   # 30k characters of ordinary text


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfsec")
    build_tiny_llama(root / "tiny-llama")
    build_tiny_llama(root / "short-llama", ctx=64)
    build_tiny_bert(root / "tiny-bert")
    return root


@pytest.fixture(scope="module")
def worker(models, tmp_path_factory):
    return make_worker(model_dirs=[str(models)], cache_dir=str(tmp_path_factory.mktemp("cache")), threads=1)


@pytest.fixture
def no_tokenising(monkeypatch):
    """Counts every chat render / tokenisation the worker does."""
    seen = {"render": 0, "encode": []}
    render, encode = chatmod.render, chatmod.encode

    def count_render(*a, **k):
        seen["render"] += 1
        return render(*a, **k)

    def count_encode(tok, text, templated):
        seen["encode"].append(len(text))
        return encode(tok, text, templated)
    monkeypatch.setattr(chatmod, "render", count_render)
    monkeypatch.setattr(chatmod, "encode", count_encode)
    return seen


def call(handler, method, req, **hdr):
    ctx, parts = make_test_context(method, payload=req.SerializeToString(), **hdr)
    return handler(ctx), parts


def refused(handler, method, req) -> str:
    with pytest.raises(WorkerError) as ei:
        call(handler, method, req)
    assert ei.value.code == "INVALID_ARGUMENT", ei.value.message
    return ei.value.message


def chat_req(n, content="", model="tiny-llama"):
    msgs = [ML.ChatMessage(role="user", content=content) for _ in range(n)]
    return ML.ChatRequest(model=model, messages=msgs)


def chat_ok(worker, model="tiny-llama"):
    old = worker.chat_max_new
    worker.chat_max_new = 3
    try:
        out, _ = call(worker.chat_completion, CHAT, chat_req(1, "the capital of france", model))
    finally:
        worker.chat_max_new = old
    return ML.ChatResponse.FromString(out)


# ---- row 9: chat bounded before any work -----------------------------------------------------------------
def test_chat_message_count_refused_before_rendering(worker, no_tokenising):
    worker._acquire("tiny-llama", "generate")
    msg = refused(worker.chat_completion, CHAT, chat_req(100_000))            # 0.8 MB: passes the byte bound
    assert "100000" in msg and str(limits.CHAT_MAX_MESSAGES) in msg and "chat_max_messages" in msg
    big = chat_req(110_000, "x" * 100)                                          # 11 MB, as in the probe
    msg = refused(worker.chat_completion, CHAT, big)
    assert "bytes" in msg and f"{limits.CHAT_MAX_MESSAGES} messages" in msg
    assert no_tokenising["render"] == 0 and no_tokenising["encode"] == []
    assert chat_ok(worker).done                                                 # the worker still serves


def test_chat_total_characters_refused_before_rendering(worker, no_tokenising):
    n = limits.CHAT_MAX_TOTAL_CHARS // 3 + 1
    msg = refused(worker.chat_completion, CHAT, chat_req(3, "x" * n))
    assert str(3 * n) in msg and str(limits.CHAT_MAX_TOTAL_CHARS) in msg and "chat_max_chars" in msg
    assert no_tokenising["render"] == 0 and no_tokenising["encode"] == []


def test_prompt_far_over_the_context_tokenises_only_a_prefix(worker, no_tokenising):
    """short-llama's context is 64 tokens: a 200k-character prompt (within the character limit) is refused
    after tokenising 64 x PROMPT_CHARS_PER_TOKEN characters, not 200k."""
    prompt = LONG * 7
    assert len(prompt) <= limits.PROMPT_MAX_CHARS
    msg = refused(worker.generate_text, GEN, ML.TextRequest(prompt=prompt, model="short-llama", max_length=4))
    assert "context is 64 tokens" in msg
    assert no_tokenising["encode"] == [64 * limits.PROMPT_CHARS_PER_TOKEN]
    msg = refused(worker.chat_completion, CHAT, chat_req(2, LONG * 3, "short-llama"))
    assert "context is 64 tokens" in msg and max(no_tokenising["encode"]) == 64 * limits.PROMPT_CHARS_PER_TOKEN


def test_generate_bounds(worker):
    msg = refused(worker.generate_text, GEN, ML.TextRequest(prompt="x" * (limits.PROMPT_MAX_CHARS + 1), model="tiny-llama"))
    assert str(limits.PROMPT_MAX_CHARS) in msg and "max_prompt_chars" in msg
    msg = refused(worker.generate_text, GEN, ML.TextRequest(prompt="hi", model="tiny-llama",
                                                           max_length=limits.GEN_MAX_NEW_TOKENS + 1))
    assert str(limits.GEN_MAX_NEW_TOKENS) in msg


# ---- row 10: embeddings bounded before any work --------------------------------------------------------
@pytest.mark.parametrize("texts,needles", [
    ([f"t{i}" for i in range(limits.EMBED_MAX_TEXTS + 1)], [str(limits.EMBED_MAX_TEXTS), "max_embed_texts"]),
    (["x" * (limits.EMBED_MAX_TEXT_CHARS + 1)], ["texts[0]", str(limits.EMBED_MAX_TEXT_CHARS), "embed_max_text_chars"]),
    ([LONG] * 80, [str(80 * len(LONG)), str(limits.EMBED_MAX_TOTAL_CHARS), "embed_max_total_chars"]),
    ([LONG] * 2048, ["bytes", f"{limits.EMBED_MAX_TEXTS} texts"]),              # the probe's 61 MB request
])
def test_embeddings_over_limits_refused_before_encoding(worker, texts, needles):
    lm = worker._acquire("tiny-bert", "embed")
    before = lm.batcher.batched_texts
    msg = refused(worker.generate_embeddings, EMB, ML.GenerateEmbeddingsRequest(texts=texts, model="tiny-bert"))
    for n in needles:
        assert n in msg, msg
    assert lm.batcher.batched_texts == before
    out, _ = call(worker.generate_embeddings, EMB, ML.GenerateEmbeddingsRequest(texts=["to be"], model="tiny-bert"))
    assert len(ML.GeneratedEmbeddingsResponse.FromString(out).embeddings) == 1


def test_expired_embeddings_request_is_never_encoded(worker):
    lm = worker._acquire("tiny-bert", "embed")
    before = lm.batcher.batched_texts
    with pytest.raises(WorkerError) as ei:
        call(worker.generate_embeddings, EMB, ML.GenerateEmbeddingsRequest(texts=["a", "b"], model="tiny-bert"),
             deadline=time.time() - 1)
    assert ei.value.code == "DEADLINE_EXCEEDED" and "after 0 of 2 texts" in ei.value.message
    assert lm.batcher.batched_texts == before


class Spy:
    """Wraps a batcher's encode: records (start, end, texts) of every sub-batch; can hold the first one."""

    def __init__(self, batcher, hold_first: bool = False):
        self.batcher, self.inner = batcher, batcher.encode
        self.calls: list = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, texts):
        rec = [time.perf_counter(), None, list(texts)]
        self.calls.append(rec)
        self.started.set()
        self.release.wait()
        try:
            return self.inner(texts)
        finally:
            rec[1] = time.perf_counter()

    def __enter__(self):
        self.batcher.encode = self
        return self

    def __exit__(self, *exc):
        self.batcher.encode = self.inner


def in_thread(fn):
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            box["error"] = exc
        box["at"] = time.perf_counter()
    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_small_request_is_not_held_behind_a_big_one(worker):
    """Sub-batches are filled round-robin: a small request that arrives while a big one runs is in the
    next sub-batch, not after the big request's last one."""
    lm = worker._acquire("tiny-bert", "embed")
    big = [f"big {i} the quick brown fox" for i in range(4 * lm.batcher.max_batch)]
    with Spy(lm.batcher, hold_first=True) as spy:
        t, box = in_thread(lambda: call(worker.generate_embeddings, EMB,
                                        ML.GenerateEmbeddingsRequest(texts=big, model="tiny-bert")))
        assert spy.started.wait(30)
        t2, box2 = in_thread(lambda: call(worker.generate_embeddings, EMB,
                                          ML.GenerateEmbeddingsRequest(texts=["small one"], model="tiny-bert")))
        end = time.monotonic() + 30
        while not lm.batcher.waiting() and time.monotonic() < end:   # the small one queues behind the held sub-batch
            time.sleep(0.001)
        assert lm.batcher.waiting()
        spy.release.set()
        t.join(60)
        t2.join(60)
    assert "error" not in box and "error" not in box2
    with_small = [i for i, c in enumerate(spy.calls) if "small one" in c[2]]
    assert with_small == [1] and len(spy.calls) >= 4


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    w = make_worker(cache_dir=str(tmp_path_factory.mktemp("cache")), threads=1)
    w._acquire(MINILM, "embed")
    return w


def test_cancelled_big_embeddings_stop_within_one_sub_batch(minilm):
    """Row 10 in-process: 48 texts of 30k characters. Measured whole, then again cancelled once its first
    sub-batch runs while a small request arrives: the small one is served long before the big one would
    have ended, at most one big sub-batch starts after the cancel, and the big request is answered only
    after its last sub-batch ended (so the broker counts it in flight exactly while it works)."""
    w = minilm
    lm = w._loaded[MINILM]
    big = [f"text {i}: {LONG}" for i in range(48)]
    req = ML.GenerateEmbeddingsRequest(texts=big, model=MINILM)
    with Spy(lm.batcher) as spy:
        t0 = time.perf_counter()
        out, _ = call(w.generate_embeddings, EMB, req)
        whole = time.perf_counter() - t0
        assert len(ML.GeneratedEmbeddingsResponse.FromString(out).embeddings) == 48
        sub_batches = len(spy.calls)
        spy.calls.clear()
        spy.started.clear()

        ctx, _ = make_test_context(EMB, payload=req.SerializeToString())
        t, box = in_thread(lambda: w.generate_embeddings(ctx))
        assert spy.started.wait(60)
        cancelled_at = time.perf_counter()
        ctx.cancelled.set()
        small, _ = call(w.generate_embeddings, EMB, ML.GenerateEmbeddingsRequest(texts=["a short one"], model=MINILM))
        small_s = time.perf_counter() - cancelled_at
        t.join(120)
    assert sub_batches >= 4, sub_batches
    assert isinstance(box.get("error"), Cancelled), box
    big_calls = [c for c in spy.calls if any(x.startswith("text ") for x in c[2])]
    assert len([c for c in big_calls if c[0] > cancelled_at]) <= 1
    assert len(big_calls) < sub_batches
    assert box["at"] >= max(c[1] for c in big_calls)
    assert len(ML.GeneratedEmbeddingsResponse.FromString(small).embeddings) == 1
    assert small_s < whole / 2, (small_s, whole)


def test_long_texts_are_clipped_before_tokenising_without_changing_vectors(minilm):
    """A 30k-character text is cut to what the model reads before tokenisation; the vector is the one the
    whole text gives (the model truncates at 256 tokens anyway)."""
    emb = minilm._loaded[MINILM].embedder
    assert emb.max_chars == emb.model.max_seq_length * limits.EMBED_CHARS_PER_TOKEN < len(LONG)
    clipped = emb.encode([LONG])[0]
    whole = emb.model.encode([LONG], convert_to_numpy=True, show_progress_bar=False)[0]
    assert np.allclose(clipped, whole, atol=1e-5)


# ---- generation and transcription stop within one step ------------------------------------------------
@pytest.mark.parametrize("method", [GEN, CHAT])
def test_cancelled_generation_runs_no_further_step(worker, method):
    lm = worker._acquire("tiny-llama", "generate")
    steps = []
    hook = lm.model.register_forward_hook(lambda *a: steps.append(1))
    if method == GEN:
        req, handler = ML.TextRequest(prompt="the quick brown fox", model="tiny-llama", max_length=500), worker.generate_text
    else:
        req, handler = chat_req(1, "the quick brown fox"), worker.chat_completion
    ctx, parts = make_test_context(method, payload=req.SerializeToString())
    seen = {}

    def send(b):
        parts.append(b)
        if len(parts) == 3:
            seen["steps"] = len(steps)
            ctx.cancelled.set()
    ctx._send_partial = send
    old = worker.chat_max_new
    worker.chat_max_new = 500
    try:
        with pytest.raises(Cancelled):
            handler(ctx)
    finally:
        worker.chat_max_new = old
        hook.remove()
    assert len(steps) == seen["steps"] and len(parts) == 3


@pytest.mark.slow
def test_cancelled_hf_whisper_stops_at_the_next_token(tmp_path):
    from tests.test_pipelines_fixtures import build_hf_whisper
    path = str(build_hf_whisper(tmp_path / "tiny-whisper"))
    w = make_worker(threads=1, model_dirs=[str(tmp_path)])
    ctx, _ = make_test_context("x", ML.LoadModelRequest(model_id=path, pipeline_type="whisper",
                                                        options={"max_new_tokens": "48"}).SerializeToString())
    assert ML.LoadModelResponse.FromString(w.load_model(ctx)).success
    model = w._loaded[path].handle.model
    ctx, _ = make_test_context("pythonml.v1.Speech/Transcribe", X.TranscribeRequest(model=path).SerializeToString(),
                               frame=A.to_wav_bytes(np.zeros(16000 * 5, dtype=np.float32), 16000))
    steps = []

    def on_step(*a):
        steps.append(1)
        ctx.cancelled.set()
    hook = model.model.decoder.register_forward_hook(on_step)
    try:
        with pytest.raises(Cancelled):
            w.transcribe(ctx)
    finally:
        hook.remove()
    assert len(steps) == 1


def float_wav(samples: np.ndarray, rate: int) -> bytes:
    import struct
    body = samples.astype("<f4").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 3, 1, rate, rate * 4, 4, 32) + b"data" + struct.pack("<I", len(body)) + body)


def test_audio_duration_refused_before_samples_are_converted():
    """3 s of NaN samples with a 2 s limit: the duration is refused from the header and byte count, before
    the samples are converted and looked at (which would refuse the NaN)."""
    nan = np.full(8000 * 3, np.nan, dtype=np.float32)
    for data, kw in ((float_wav(nan, 8000), {}), (nan.astype("<f4").tobytes(), dict(encoding="pcm_f32le", sample_rate=8000))):
        with pytest.raises(WorkerError) as ei:
            A.decode(data, max_seconds=2.0, **kw)
        assert ei.value.code == "INVALID_ARGUMENT" and "3 s long; the limit is 2 s" in ei.value.message
        assert "max_audio_s" in ei.value.message
        with pytest.raises(WorkerError) as ei:
            A.decode(data, max_seconds=4.0, **kw)
        assert "NaN" in ei.value.message
    assert limits.AUDIO_MAX_SECONDS == 1800


# ---- through the real service ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def svc(models):
    from tests.service import start_service
    s = start_service(args=["--pools", "hf", "--cuda", "off", "--model-dir", str(models)],
                      wait_service="ml.TransformersService", timeout=180)
    yield s
    s.stop()


def hf_inflight(channel) -> int:
    st = XG.StatsStub(channel).GetStats(X.StatsRequest(), timeout=10)
    return sum(wk.inflight for wk in st.workers if wk.pool == "hf")


@pytest.mark.integration
@pytest.mark.slow
def test_service_refuses_over_limit_requests_and_stays_healthy(svc):
    stub = MLG.TransformersServiceStub(svc.channel())
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.ChatCompletion(chat_req(5000), timeout=30))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1024" in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=["x"] * 300, model=MINILM), timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "256" in ei.value.details()
    pieces = list(stub.GenerateText(ML.TextRequest(prompt="to be", model="tiny-llama", max_length=4), timeout=60))
    assert pieces[-1].done and pieces[-1].tokens_generated == 4
    assert hf_inflight(svc.channel()) == 0


@pytest.mark.integration
@pytest.mark.slow
def test_service_expired_embeddings_free_the_worker_and_stats_say_so(svc):
    """Row 10 through gRPC: a big request measured whole, then sent with a deadline of a quarter of that:
    the worker stops it (Stats' in-flight back to 0) long before it would have ended, and a small request
    is then served."""
    ch = svc.channel()
    stub = MLG.TransformersServiceStub(ch)
    stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=["warm up"], model=MINILM), timeout=120)
    req = ML.GenerateEmbeddingsRequest(texts=[f"text {i}: {LONG}" for i in range(64)], model=MINILM)
    t0 = time.perf_counter()
    assert len(stub.GenerateEmbeddings(req, timeout=300).embeddings) == 64
    whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    with pytest.raises(grpc.RpcError) as ei:
        stub.GenerateEmbeddings(req, timeout=whole / 4)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    while hf_inflight(ch) and time.perf_counter() - t0 < 2 * whole:
        time.sleep(0.02)
    freed = time.perf_counter() - t0
    assert hf_inflight(ch) == 0
    out = stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=["a short one"], model=MINILM), timeout=60)
    assert len(out.embeddings) == 1
    assert freed < 0.75 * whole, (freed, whole)
