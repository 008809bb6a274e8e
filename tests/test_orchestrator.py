"""A test that is the orchestrator (docs/contract/ml_inference.md, "How the orchestrator behaves" and
"What the orchestrator really sends"): it spawns `python3 <abs>/run.py --port P` from its own folder (which
holds its model cache `models/<org>/<repo>/<file>`), never reads the pipes, waits a fixed 2 s, opens one
channel with tonic's 4 MiB receive limit and no deadlines, and calls GenerateText and GenerateEmbeddings
with cache paths and repo ids, without LoadModel."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import grpc
import pytest

from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from tests.service import ROOT, free_port
from tests.test_hf_fixtures import build_tiny_bert, build_tiny_llama

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FOUR_MIB = 4 * 2**20
CHAT = "System: You are a helpful assistant.\nUser: What is the capital of France?\nAssistant: Paris.\nUser: And of Italy?"


@pytest.fixture(scope="module")
def orchestrator(tmp_path_factory):
    home = tmp_path_factory.mktemp("orchestrator")
    build_tiny_llama(home / "models" / "acme" / "tiny-lm", eos=True)
    build_tiny_bert(home / "models" / "acme" / "tiny-encoder")
    from common import litert_catalogue as registry
    lite = home / "models" / "google" / "gemma-3n-litert"
    lite.mkdir(parents=True)
    shutil.copy(registry.resolve("face_detection_short_range"), lite / "model.tflite")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PML_")}
    env.pop("VIRTUAL_ENV", None)
    # its own folder as working directory; pipes it never reads; plain python3 (run.py finds its .venv)
    proc = subprocess.Popen(["python3", os.path.join(ROOT, "run.py"), "--port", str(port), "--cuda", "off"],
                            cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    time.sleep(2.0)   # the orchestrator's fixed wait, then one connection
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", FOUR_MIB)])
    yield channel, home
    channel.close()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def generate(channel, model, prompt=CHAT, max_length=512):
    stub = MLG.TransformersServiceStub(channel)
    text, last = "", None
    for r in stub.GenerateText(ML.TextRequest(prompt=prompt, model=model, max_length=max_length, top_p=0.9,
                                              temperature=0.7)):
        text += r.text
        last = r
        if r.done:
            break   # it stops reading at `done` and drops the stream
    return text, last


def embed(channel, model, texts):
    return MLG.TransformersServiceStub(channel).GenerateEmbeddings(
        ML.GenerateEmbeddingsRequest(texts=texts, model=model))


def test_built_in_models_by_cache_path_and_repo_id(orchestrator):
    channel, _ = orchestrator
    for model in ("models/HuggingFaceTB/SmolLM2-135M-Instruct/model.safetensors",
                  "HuggingFaceTB/SmolLM2-135M-Instruct"):
        text, last = generate(channel, model, max_length=512 if model.startswith("models/") else 16)
        assert last is not None and last.done and last.tokens_generated > 0, model
        assert text.strip(), model
    for model in ("models/sentence-transformers/all-MiniLM-L6-v2/model.safetensors",
                  "sentence-transformers/all-MiniLM-L6-v2"):
        r = embed(channel, model, ["the cat sat on the mat", "a dog in the park"])
        assert len(r.embeddings) == 2 and all(len(e.values) == 384 for e in r.embeddings), model


def test_tiny_models_in_its_own_cache_by_cache_path(orchestrator):
    channel, home = orchestrator
    text, last = generate(channel, "models/acme/tiny-lm/model.safetensors", prompt="User: hello", max_length=16)
    assert last.done and last.tokens_generated > 0
    r = embed(channel, "models/acme/tiny-encoder/model.safetensors", ["one", "two", "three"])
    assert len(r.embeddings) == 3 and len(r.embeddings[0].values) == 32   # build_tiny_bert's hidden size


def test_what_it_gets_wrong_gets_a_clear_answer(orchestrator):
    channel, _ = orchestrator
    # a .tflite sent to GenerateText (its "mediapipe" kind): not a language model
    with pytest.raises(grpc.RpcError) as ei:
        generate(channel, "models/google/gemma-3n-litert/model.tflite")
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not a language model" in ei.value.details()
    # a model it does not have
    with pytest.raises(grpc.RpcError) as ei:
        generate(channel, "models/acme/missing/model.safetensors")
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND and "model folders" in ei.value.details()
    # an oversize embeddings batch: refused with the limit named, and the service goes on
    with pytest.raises(grpc.RpcError) as ei:
        embed(channel, "models/sentence-transformers/all-MiniLM-L6-v2/model.safetensors", ["text"] * 5000)
    assert ei.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "256" in ei.value.details()
    r = embed(channel, "sentence-transformers/all-MiniLM-L6-v2", ["still here"])
    assert len(r.embeddings[0].values) == 384
