"""HF worker mechanics on tiny random-weight models built in the test (no packaged model needed):
streaming, cancel mid-stream, concurrent streams, deadlines, bad input, load/unload memory,
embeddings batching, auto-load switch.
"""
from __future__ import annotations

import math
import time

import pytest

from protos import ml_inference_pb2 as ML
from tests.test_hf_fixtures import (build_tiny_bert, build_tiny_llama, cancel_at_partial, generate_text, make_worker,
                                    run_threads)
from workers.context import Cancelled, WorkerError, make_test_context

CHAT = "ml.TransformersService/ChatCompletion"
EMB = "ml.TransformersService/GenerateEmbeddings"
LOAD = "ml.ModelManagementService/LoadModel"
UNLOAD = "ml.ModelManagementService/UnloadModel"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfmodels")
    build_tiny_llama(root / "tiny-llama")
    build_tiny_llama(root / "tiny-llama-eos", eos=True)
    build_tiny_bert(root / "tiny-bert")
    return root


@pytest.fixture(scope="module")
def worker(models, tmp_path_factory):
    return make_worker(model_dirs=[str(models)], cache_dir=str(tmp_path_factory.mktemp("cache")),
                       auto_load=True)


def gen(worker, prompt="the quick brown fox", model="tiny-llama", max_length=12, temperature=0.0,
        top_p=0.0, on_partial=None, **hdr):
    req = ML.TextRequest(prompt=prompt, model=model, max_length=max_length, temperature=temperature, top_p=top_p)
    return generate_text(worker, req, on_partial, **hdr)


def test_generate_streams_pieces_and_counts_tokens(worker):
    parts, final = gen(worker, max_length=16)
    assert final.done and final.tokens_generated == 16
    assert len(parts) >= 4 and not any(p.done for p in parts)
    assert [p.tokens_generated for p in parts] == sorted(p.tokens_generated for p in parts)
    text = "".join(p.text for p in parts) + final.text
    assert text.strip()
    # greedy is deterministic: same text again
    parts2, final2 = gen(worker, max_length=16)
    assert "".join(p.text for p in parts2) + final2.text == text


def test_greedy_matches_model_generate(worker):
    """The manual decode loop gives exactly what transformers' generate gives (greedy)."""
    import torch
    parts, final = gen(worker, prompt="all that glitters", max_length=10)
    lm = worker._loaded["tiny-llama"]
    ids = lm.tokenizer("all that glitters", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = lm.model.generate(ids, max_new_tokens=10, do_sample=False)
    ref = lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "".join(p.text for p in parts) + final.text == ref
    # the prompt's token count travels with every answer (the OpenAI API's usage.prompt_tokens)
    assert final.prompt_tokens == ids.shape[1] and {p.prompt_tokens for p in parts} == {ids.shape[1]}


def test_sampling_top_p_small_equals_greedy(worker):
    # top_p so small that only the most likely token survives -> same as greedy even at temperature 1
    _, g = gen(worker, max_length=8)
    parts, f = gen(worker, max_length=8, temperature=1.0, top_p=1e-6)
    gp, _ = gen(worker, max_length=8)
    assert "".join(p.text for p in parts) + f.text == "".join(p.text for p in gp) + g.text


def test_stop_on_eos(worker):
    parts, final = gen(worker, model="tiny-llama-eos", max_length=300)
    assert final.done and 1 <= final.tokens_generated <= 300


def test_cancel_mid_stream_stops_within_one_step(worker):
    seen = {}
    with pytest.raises(Cancelled):
        gen(worker, max_length=500, on_partial=cancel_at_partial(3, seen))
    assert seen["last"] - seen["at_cancel"] <= 1


def test_concurrent_streams_are_independent(worker):
    prompts = ["the quick brown fox", "to be or not", "a journey of a thousand", "all that glitters"]
    expected = []
    for p in prompts:
        parts, f = gen(worker, prompt=p, max_length=12)
        expected.append("".join(x.text for x in parts) + f.text)
    out, errs = run_threads([lambda p=p: gen(worker, prompt=p, max_length=12) for p in prompts])
    assert errs == [None] * len(prompts)
    got = ["".join(x.text for x in parts) + f.text for parts, f in out]
    assert got == expected


def test_deadline_stops_generation(worker):
    lm = worker._loaded.get("tiny-llama") or worker._acquire("tiny-llama", "generate")
    hook = lm.model.register_forward_hook(lambda *a: time.sleep(0.02))
    try:
        t0 = time.time()
        with pytest.raises(WorkerError) as ei:
            gen(worker, max_length=1000, deadline=time.time() + 0.3)
        assert ei.value.code == "DEADLINE_EXCEEDED"
        assert time.time() - t0 < 1.0
    finally:
        hook.remove()


def test_chat_without_template_and_finish_reasons(worker):
    req = ML.ChatRequest(model="tiny-llama", temperature=0.0,
                         messages=[ML.ChatMessage(role="system", content="be brief"),
                                   ML.ChatMessage(role="user", content="the capital of france")])
    old = worker.chat_max_new
    worker.chat_max_new = 10
    try:
        ctx, parts = make_test_context(CHAT, payload=req.SerializeToString())
        final = ML.ChatResponse.FromString(worker.chat_completion(ctx))
    finally:
        worker.chat_max_new = old
    assert final.done and final.finish_reason == "length"
    assert parts and all(not ML.ChatResponse.FromString(p).done for p in parts)
    bad = ML.ChatRequest(model="tiny-llama", messages=[ML.ChatMessage(role="robot", content="hi")])
    ctx, _ = make_test_context(CHAT, payload=bad.SerializeToString())
    with pytest.raises(WorkerError) as ei:
        worker.chat_completion(ctx)
    assert ei.value.code == "INVALID_ARGUMENT" and "role" in ei.value.message


@pytest.mark.parametrize("kw,needle", [
    (dict(max_length=-1), "max_length"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(prompt=""), "empty"),
    (dict(prompt="   "), "empty"),
    (dict(prompt="x" * 10_000_000), "limit"),
])
def test_bad_generate_input(worker, kw, needle):
    with pytest.raises(WorkerError) as ei:
        gen(worker, **kw)
    assert ei.value.code == "INVALID_ARGUMENT"
    assert needle in ei.value.message


def test_unknown_model_says_where_it_looked(worker, models):
    with pytest.raises(WorkerError) as ei:
        gen(worker, model="no-such/model")
    assert ei.value.code == "NOT_FOUND"
    m = ei.value.message
    assert "no-such/model" in m and "SmolLM2-135M-Instruct" in m and str(models) in m and "not configured" in m


def test_path_traversal_model_id_is_not_resolved(worker):
    with pytest.raises(WorkerError) as ei:
        gen(worker, model="../tiny-llama")
    assert ei.value.code == "NOT_FOUND"


def emb(worker, texts, model="tiny-bert"):
    req = ML.GenerateEmbeddingsRequest(texts=texts, model=model)
    ctx, _ = make_test_context(EMB, payload=req.SerializeToString(), model=model)
    return [list(e.values) for e in ML.GeneratedEmbeddingsResponse.FromString(worker.generate_embeddings(ctx)).embeddings]


def test_embeddings_plain_encoder_normalized_and_ordered(worker):
    vecs = emb(worker, ["the quick brown fox", "all that glitters is not gold", "to be"])
    assert len(vecs) == 3 and len(vecs[0]) == 32
    for v in vecs:
        assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4)
    single = emb(worker, ["all that glitters is not gold"])[0]
    assert max(abs(a - b) for a, b in zip(single, vecs[1])) < 1e-4
    # usage: the tokens the encoder read, special tokens included
    texts = ["the quick brown fox", "to be"]
    req = ML.GenerateEmbeddingsRequest(texts=texts, model="tiny-bert")
    ctx, _ = make_test_context(EMB, payload=req.SerializeToString(), model="tiny-bert")
    got = ML.GeneratedEmbeddingsResponse.FromString(worker.generate_embeddings(ctx)).prompt_tokens
    tok = worker._loaded["tiny-bert"].embedder.tokenizer
    assert got == sum(len(tok(t)["input_ids"]) for t in texts) > len(texts)


def test_embeddings_batch_across_concurrent_requests(worker):
    emb(worker, ["warm"])
    lm = worker._loaded["tiny-bert"]
    b0, t0, wait = lm.batcher.batches, lm.batcher.batched_texts, lm.batcher.max_wait_s
    texts = [f"{w} fox" for w in ["the", "quick", "brown", "lazy", "dog", "gold", "rome", "paris"] * 2]
    lm.batcher.max_wait_s = 0.05
    try:
        out, errs = run_threads([lambda t=t: emb(worker, [t]) for t in texts])
    finally:
        lm.batcher.max_wait_s = wait
    assert errs == [None] * len(texts)
    assert lm.batcher.batched_texts - t0 == len(texts)
    assert lm.batcher.batches - b0 < len(texts) / 2          # requests really shared forward passes
    for t, v in zip(texts, out):
        assert max(abs(a - b) for a, b in zip(v[0], emb(worker, [t])[0])) < 1e-4


def test_empty_texts_invalid(worker):
    with pytest.raises(WorkerError) as ei:
        emb(worker, [])
    assert ei.value.code == "INVALID_ARGUMENT" and "texts" in ei.value.message


def test_wrong_kind(worker):
    with pytest.raises(WorkerError) as ei:
        emb(worker, ["x"], model="tiny-llama")
    assert ei.value.code == "FAILED_PRECONDITION"


def load(worker, model_id, pipeline_type="", **options):
    req = ML.LoadModelRequest(model_id=model_id, pipeline_type=pipeline_type, options=options)
    ctx, _ = make_test_context(LOAD, payload=req.SerializeToString())
    return ML.LoadModelResponse.FromString(worker.load_model(ctx))


def unload(worker, model_id):
    ctx, _ = make_test_context(UNLOAD, payload=ML.UnloadModelRequest(model_id=model_id).SerializeToString())
    return ML.StatusResponse.FromString(worker.unload_model(ctx))


def test_load_options_validated(worker):
    with pytest.raises(WorkerError) as ei:
        load(worker, "tiny-llama-eos", dtype="int3")
    assert ei.value.code == "INVALID_ARGUMENT"
    with pytest.raises(WorkerError) as ei:
        load(worker, "tiny-llama-eos", device="cuda:7")
    assert ei.value.code == "FAILED_PRECONDITION"
    with pytest.raises(WorkerError) as ei:
        load(worker, "tiny-llama-eos", pipeline_type="text-to-image")
    assert ei.value.code == "UNIMPLEMENTED"


def test_unload_returns_measured_memory(tmp_path):
    # a bigger random model so the delta stands out of allocator noise (~64 MB of float32 weights)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from tests.test_hf_fixtures import build_tokenizer
    d = tmp_path / "mid-llama"
    d.mkdir()
    tok = build_tokenizer(d, eos=True)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    w = make_worker(model_dirs=[str(tmp_path)], cache_dir=str(tmp_path / "c"), recycle_on_unload=False)
    r = load(w, "mid-llama", "text-generation")
    assert r.success and r.ram_allocated_mb >= 40, r
    assert abs(w.models["mid-llama"].ram_mb - r.ram_allocated_mb) <= 0.5
    again = load(w, "mid-llama", "text-generation")
    assert "already loaded" in again.message
    s = unload(w, "mid-llama")
    assert s.success
    freed = float(s.message.split("freed ")[1].split(" MB")[0])
    assert freed >= 0.6 * r.ram_allocated_mb, (s.message, r.ram_allocated_mb)
    assert "mid-llama" not in w.models
    with pytest.raises(WorkerError) as ei:
        unload(w, "mid-llama")
    assert ei.value.code == "NOT_FOUND"


def test_auto_load_off(models, tmp_path):
    w = make_worker(model_dirs=[str(models)], cache_dir=str(tmp_path), auto_load=False)
    with pytest.raises(WorkerError) as ei:
        gen(w)
    assert ei.value.code == "FAILED_PRECONDITION" and "LoadModel" in ei.value.message
    assert load(w, "tiny-llama", "text-generation").success
    _, final = gen(w, max_length=3)
    assert final.tokens_generated == 3


def test_concurrent_auto_loads_of_one_model_under_two_strings_share_one_copy(tmp_path, monkeypatch):
    """Two first requests name one folder by two strings (its id and its file path): one load, one copy.
    The second waits for the first's load and must find its record. The log line between the load and the
    registry is slowed down to hold open the window where, when the record was added after the load lock,
    the second request loaded a second copy."""
    build_tiny_llama(tmp_path / "acme" / "tiny-lm")
    w = make_worker(model_dirs=[str(tmp_path)], cache_dir=str(tmp_path / "cache"), auto_load=True)
    info = w.log.info

    def slow_info(msg, *args, **kw):
        if msg.startswith("loaded %s ("):
            time.sleep(0.5)
        info(msg, *args, **kw)
    monkeypatch.setattr(w.log, "info", slow_info)   # the logger is shared: restored after the test
    out, errs = run_threads([lambda: gen(w, model="acme/tiny-lm", max_length=3),
                             lambda: gen(w, model="acme/tiny-lm/model.safetensors", max_length=3)])
    assert errs == [None, None], errs
    assert all(final.tokens_generated == 3 for _, final in out)
    assert len(w.models) == 1, sorted(w.models)
