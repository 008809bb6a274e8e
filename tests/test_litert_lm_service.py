"""LiteRT-LM through the real service (run.py subprocess, gRPC), as a client sees it: GenerateText and
ChatCompletion stream the built-in SmolLM2-135M-Instruct-litertlm without LoadModel, greedy twice gives the same
text, the orchestrator's cache path for the bundle reaches it, a cancelled stream frees the engine,
LoadModel / GetLoadedModels / UnloadModel report measured RAM, and a .tflite ModelInfer on the litert pool is
answered while a long LiteRT-LM generation is still streaming (the engine lives in the hf worker). Needs the bundle
(scripts/setup.sh --dev or --litertlm builds it; skipped with that reason otherwise)."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from tests.service import cancel_after, start_service
from tests.test_litert_lm import ALIAS, bundle_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.integration]
STORY = "Write a long story about a dragon."


@pytest.fixture(scope="module")
def svc():
    bundle_or_skip()
    s = start_service(args=["--pools", "hf,litert", "--cuda", "off", "--worker-threads", "2"],
                      wait_service="ml.TransformersService", timeout=240)
    yield s
    s.stop()


def generate(svc, prompt="What is the capital of France?", model=ALIAS, **kw):
    stub = MLG.TransformersServiceStub(svc.channel())
    return list(stub.GenerateText(ML.TextRequest(prompt=prompt, model=model, **kw), timeout=300))


def test_generate_and_chat_stream_without_load_model(svc):
    a = generate(svc, max_length=64)
    assert len(a) >= 4 and a[-1].done and sum(p.done for p in a) == 1 and a[-1].tokens_generated > 0
    assert "Paris" in "".join(p.text for p in a)
    b = generate(svc, max_length=64)
    assert "".join(p.text for p in a) == "".join(p.text for p in b)       # greedy: the same text
    stub = MLG.TransformersServiceStub(svc.channel())
    chat = list(stub.ChatCompletion(ML.ChatRequest(model=ALIAS, max_length=5, messages=[
        ML.ChatMessage(role="system", content="You are brief."),
        ML.ChatMessage(role="user", content=STORY)]), timeout=300))
    assert chat[-1].done and chat[-1].finish_reason == "length" and len(chat) >= 2


def test_the_orchestrators_cache_path_reaches_the_bundle(svc):
    # the orchestrator sends cache paths; this one names SmolLM2's repo and a bundle file that is not there
    parts = generate(svc, model="models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.litertlm",
                     max_length=16)
    assert parts[-1].done and "".join(p.text for p in parts).strip()


def test_cancel_frees_the_engine(svc):
    stub = MLG.TransformersServiceStub(svc.channel())
    call = stub.GenerateText(ML.TextRequest(prompt=STORY, model=ALIAS, max_length=900), timeout=300)
    assert cancel_after(call, 3) == 3
    parts = generate(svc, max_length=32)                     # served: nothing holds the engine
    assert parts[-1].done


def test_load_list_unload_with_measured_memory(svc):
    mm = MLG.ModelManagementServiceStub(svc.channel())
    r = mm.LoadModel(ML.LoadModelRequest(model_id=ALIAS), timeout=300)
    assert r.success and ("CPU backend" in r.message or r.message.endswith("; GPU backend"))
    listed = {m.model_id: m for m in mm.GetLoadedModels(ML.EmptyRequest(), timeout=30).models}
    assert ALIAS in listed and listed[ALIAS].ram_mb > 0 and abs(listed[ALIAS].ram_mb - r.ram_allocated_mb) <= 1
    s = mm.UnloadModel(ML.UnloadModelRequest(model_id=ALIAS), timeout=120)
    assert s.success and "freed" in s.message
    assert ALIAS not in {m.model_id for m in mm.GetLoadedModels(ML.EmptyRequest(), timeout=30).models}
    assert generate(svc, max_length=8)[-1].done               # loads again on first use


def test_a_tflite_model_is_answered_while_a_generation_streams(svc):
    from protos.kserve import grpc_service_pb2 as K
    from protos.kserve import grpc_service_pb2_grpc as KG
    from tests.litert_inputs import FACE_MODEL, face_input
    stub = MLG.TransformersServiceStub(svc.channel())
    call = stub.GenerateText(ML.TextRequest(prompt=STORY, model=ALIAS, max_length=900), timeout=600)
    it = iter(call)
    first = next(it)
    assert not first.done
    x = face_input("grace_hopper.jpg")
    req = K.ModelInferRequest(model_name=FACE_MODEL)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
    resp = KG.GRPCInferenceServiceStub(svc.channel()).ModelInfer(req, timeout=120)
    assert resp.outputs
    after = next(it)                                            # the generation was still streaming meanwhile
    assert not after.done and after.tokens_generated > first.tokens_generated
    call.cancel()
