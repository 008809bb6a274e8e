"""LiteRT through the real service (run.py subprocess): stock tritonclient[grpc], the CLI verb, stats.

tritonclient runs in a child process (tests/litert_triton_probe.py) because its protos clash with ours
inside one interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from tests.litert_inputs import face_input
from tests.service import PYTHON, ROOT, start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def service():
    svc = start_service(args=["--pools", "litert", "--worker-threads", "1"],
                        wait_service="inference.GRPCInferenceService", timeout=120)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def probe(service):
    import importlib.util
    if importlib.util.find_spec("tritonclient") is None:  # do not import it here: its protos clash with ours
        pytest.skip("tritonclient[grpc] is not installed")
    from common import litert_catalogue as registry
    proc = subprocess.run([PYTHON, os.path.join(ROOT, "tests", "litert_triton_probe.py"), service.address,
                           registry.resolve("okay_nabu")], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:] + "\n--- service log ---\n" + service.log()[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_server_health_and_metadata(probe):
    assert probe["live"] and probe["ready"]
    assert probe["server"]["name"] == "pythonml" and "model_repository" in probe["server"]["extensions"]


def test_face_detector_through_tritonclient(probe):
    assert probe["face_ready"] and probe["index"]["face_detection_short_range"] == "READY"
    assert probe["face_meta"]["inputs"] == [["input", "FP32", [1, 128, 128, 3]]]
    assert [o[0] for o in probe["face_meta"]["outputs"]] == ["regressors", "classificators"]
    assert probe["portrait_score"] > 0.5 > probe["fish_score"], (probe["portrait_score"], probe["fish_score"])
    assert probe["regressors_shape"] == [1, 896, 16] and probe["response_id"] == "probe-1"
    assert probe["fish_outputs"] == ["classificators"]


def test_int8_model_uploaded_through_the_repository(probe):
    assert probe["wake_meta"]["inputs"] == [["input_audio", "INT8", [1, 3, 40]]]
    assert probe["wake_meta"]["outputs"][0][1:] == ["UINT8", [1, 1]]
    w = probe["wake_out"]
    assert w["datatype"] == "UINT8" and w["dtype"] == "uint8" and w["shape"] == [1, 1]
    assert w["scale"] == pytest.approx(0.00390625) and w["zero_point"] == 0


def test_bad_inputs_precise_status_and_the_worker_stays_up(probe):
    def check(key, status, *texts):
        err = probe[key]
        assert err is not None, f"{key}: no error"
        assert err["status"] == f"StatusCode.{status}", err
        for t in texts:
            assert t in err["message"], err
    check("err_name", "INVALID_ARGUMENT", "no input 'image'")
    check("err_dtype", "INVALID_ARGUMENT", "expected FP32 [1,128,128,3] (196608 bytes)", "FP64")
    check("err_shape", "INVALID_ARGUMENT", "got shape [1,64,128,3]")
    check("err_bytes", "INVALID_ARGUMENT", "(196608 bytes), got 1000 bytes")
    check("err_output", "INVALID_ARGUMENT", "no output 'scores'")
    check("err_custom_op", "FAILED_PRECONDITION", "Landmarks2TransformMatrix")
    check("err_unknown_model", "NOT_FOUND", "no_such_model_xyz")
    assert probe["after_errors_score"] > 0.5


def test_unload_through_the_repository(probe):
    assert probe["wake_ready_after_unload"] is False
    assert "wake_uploaded" not in probe["index_after_unload"]
    assert probe["err_unload_again"]["status"] == "StatusCode.NOT_FOUND"


def test_one_registry_for_both_apis(service, probe):
    from protos import ml_inference_pb2 as ML
    from protos import ml_inference_pb2_grpc as MLG
    stub = MLG.ModelManagementServiceStub(service.channel())
    loaded = {m.model_id: m for m in stub.GetLoadedModels(ML.EmptyRequest(), timeout=10).models}
    assert "face_detection_short_range" in loaded and loaded["face_detection_short_range"].pipeline_type == "tflite"
    resp = stub.LoadModel(ML.LoadModelRequest(model_id="palm_detection_lite", pipeline_type="tflite"), timeout=60)
    assert resp.success and "input_1 FP32 [1,192,192,3]" in resp.message
    from protos.kserve import grpc_service_pb2 as K
    from protos.kserve import grpc_service_pb2_grpc as KG
    kstub = KG.GRPCInferenceServiceStub(service.channel())
    idx = {m.name: m.state for m in kstub.RepositoryIndex(K.RepositoryIndexRequest(ready=True), timeout=10).models}
    assert idx.get("palm_detection_lite") == "READY"
    kstub.RepositoryModelUnload(K.RepositoryModelUnloadRequest(model_name="palm_detection_lite"), timeout=30)
    loaded = {m.model_id for m in stub.GetLoadedModels(ML.EmptyRequest(), timeout=10).models}
    assert "palm_detection_lite" not in loaded


def test_cli_infer_verb(service, tmp_path):
    npy = tmp_path / "face.npy"
    np.save(npy, face_input("grace_hopper.jpg"))
    proc = subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "call", "--address", service.address,
                           "infer", "face_detection_short_range", str(npy)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "classificators" in out and "FP32 [1,896,1]" in out and "regressors" in out
    bad = subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "call", "--address", service.address,
                          "infer", "face_detection_short_range", str(npy), "--input", "image"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "INVALID_ARGUMENT" in bad.stdout + bad.stderr


def test_bench_rows():
    from bench.bench_litert import run
    rows = run(quick=True)
    assert [r["bench"] for r in rows] == ["litert"] * 4
    infer, _, overhead, echo = rows
    assert infer["value"] > 0 and infer["baseline"] > 0 and infer["ratio"] == pytest.approx(
        infer["value"] / infer["baseline"], rel=0.02)
    assert overhead["value"] == pytest.approx(infer["value"] - infer["baseline"], abs=0.002)
    assert "face score 0.9" in infer["note"] and echo["value"] > 0
