"""The HF worker through the real service (run.py subprocess, gRPC): GenerateText and
GenerateEmbeddings without LoadModel (as the orchestrator calls them), cancel mid-stream,
Load/Unload/GetLoadedModels with measured memory, GetModelFile served by the service,
precise statuses for bad input, and the CLI verbs.
"""
from __future__ import annotations

import os
import subprocess
import time

import grpc
import numpy as np
import pytest

from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from tests.service import PYTHON, ROOT, cancel_after, start_service
from tests.test_hf_fixtures import build_tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    build_tiny_llama(models / "tiny-llama")
    s = start_service(args=["--pools", "hf", "--cuda", "off", "--model-dir", str(models)],
                      wait_service="ml.TransformersService", timeout=180)
    s.models_dir = models
    yield s
    s.stop()


def test_generate_text_without_load_model(svc):
    stub = MLG.TransformersServiceStub(svc.channel())
    req = ML.TextRequest(prompt="What is the capital of France?", model="SmolLM2-135M-Instruct",
                         max_length=512, temperature=0.0, top_p=0.9)
    pieces = list(stub.GenerateText(req, timeout=300))
    text = "".join(p.text for p in pieces)
    assert "Paris" in text and pieces[-1].done and len(pieces) >= 3
    assert sum(p.done for p in pieces) == 1


def test_embeddings_without_load_model(svc):
    stub = MLG.TransformersServiceStub(svc.channel())
    out = stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(
        texts=["A man is playing a guitar.", "Someone plays an acoustic guitar.", "Stocks fell today."],
        model="all-MiniLM-L6-v2"), timeout=120)
    v = np.array([list(e.values) for e in out.embeddings])
    assert v.shape == (3, 384) and v[0] @ v[1] > v[0] @ v[2]


def test_cancel_mid_stream_frees_the_worker(svc):
    stub = MLG.TransformersServiceStub(svc.channel())
    call = stub.GenerateText(ML.TextRequest(prompt="the quick brown fox", model="tiny-llama", max_length=60000),
                             timeout=60)
    cancel_after(call, 5)
    # the worker is free again straight away: a short request completes quickly
    t0 = time.time()
    pieces = list(stub.GenerateText(ML.TextRequest(prompt="to be", model="tiny-llama", max_length=4), timeout=30))
    assert pieces[-1].done and pieces[-1].tokens_generated == 4 and time.time() - t0 < 10


def test_deadline_exceeded(svc):
    stub = MLG.TransformersServiceStub(svc.channel())
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.GenerateText(ML.TextRequest(prompt="the quick", model="tiny-llama", max_length=60000), timeout=1.0))
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("req,code,needle", [
    (ML.TextRequest(prompt="hi", model="no-such-model"), grpc.StatusCode.NOT_FOUND, "looked for a built-in model"),
    (ML.TextRequest(prompt="hi", model="tiny-llama", max_length=-3), grpc.StatusCode.INVALID_ARGUMENT, "max_length"),
    (ML.TextRequest(prompt="hi", model="tiny-llama", temperature=float("nan")), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    (ML.TextRequest(prompt="", model="tiny-llama"), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
])
def test_bad_input_precise_status(svc, req, code, needle):
    stub = MLG.TransformersServiceStub(svc.channel())
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.GenerateText(req, timeout=60))
    assert ei.value.code() == code and needle in ei.value.details(), ei.value.details()


def test_ten_megabyte_prompt_refused(svc):
    stub = MLG.TransformersServiceStub(svc.channel())
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.GenerateText(ML.TextRequest(prompt="x" * 10_000_000, model="tiny-llama"), timeout=60))
    assert ei.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "limit" in ei.value.details() or "larger" in ei.value.details()


def test_empty_texts(svc):
    stub = MLG.TransformersServiceStub(svc.channel())
    with pytest.raises(grpc.RpcError) as ei:
        stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=[], model="all-MiniLM-L6-v2"), timeout=60)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_load_list_unload(svc):
    mm = MLG.ModelManagementServiceStub(svc.channel())
    r = mm.LoadModel(ML.LoadModelRequest(model_id="sentence-transformers/all-MiniLM-L6-v2",
                                         pipeline_type="feature-extraction"), timeout=120)
    assert r.success and r.ram_allocated_mb > 10, r
    listed = {m.model_id: m for m in mm.GetLoadedModels(ML.EmptyRequest(), timeout=10).models}
    assert abs(listed["sentence-transformers/all-MiniLM-L6-v2"].ram_mb - r.ram_allocated_mb) <= 1
    s = mm.UnloadModel(ML.UnloadModelRequest(model_id="sentence-transformers/all-MiniLM-L6-v2"), timeout=60)
    assert s.success and "freed" in s.message
    listed = {m.model_id for m in mm.GetLoadedModels(ML.EmptyRequest(), timeout=10).models}
    assert "sentence-transformers/all-MiniLM-L6-v2" not in listed


def test_service_serves_model_files(svc):
    mm = MLG.ModelManagementServiceStub(svc.channel())
    chunks = list(mm.GetModelFile(ML.ModelFileRequest(model_id="tiny-llama", file_path="config.json"), timeout=30))
    assert b"".join(c.data for c in chunks) == (svc.models_dir / "tiny-llama" / "config.json").read_bytes()
    with pytest.raises(grpc.RpcError) as ei:
        list(mm.GetModelFile(ML.ModelFileRequest(model_id="tiny-llama", file_path="../../etc/passwd"), timeout=30))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def cli(svc, *argv, timeout=120):
    return subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "call", "--address", svc.address, *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_cli_verbs(svc):
    r = cli(svc, "generate", "--model", "tiny-llama", "--max-length", "5", "the quick")
    assert r.returncode == 0, r.stderr
    r = cli(svc, "chat", "--model", "SmolLM2-135M-Instruct", "What is the capital of France?")
    assert r.returncode == 0 and "Paris" in r.stdout, (r.stdout, r.stderr)
    r = cli(svc, "embed", "--model", "all-MiniLM-L6-v2", "hello", "world")
    assert r.returncode == 0 and r.stdout.count("dim=384") == 2, r.stdout
    r = cli(svc, "load", "tiny-llama", "--pipeline", "text-generation")
    assert r.returncode == 0 and "MB" in r.stdout, r.stdout + r.stderr
    r = cli(svc, "models")
    assert r.returncode == 0 and "tiny-llama" in r.stdout
    r = cli(svc, "unload", "tiny-llama")
    assert r.returncode == 0 and "freed" in r.stdout
    r = cli(svc, "generate", "--model", "nope", "hi")
    assert r.returncode != 0 and "NOT_FOUND" in r.stderr
