"""LiteRT pool handlers, in-process (no broker): real bundled models, real images and speech.

The handlers are driven through workers.context.make_test_context with serialized protobuf requests,
exactly as the worker base calls them.
"""
from __future__ import annotations

import os
import threading
from concurrent import futures

import numpy as np
import pytest

from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from protos.kserve import grpc_service_pb2 as K
from tests.litert_inputs import ASSETS, FACE_MODEL, WAKEWORD_MODEL, best_face_score, face_input, wakeword_windows
from workers.base import ModelRegistry
from workers.context import WorkerError, make_test_context
from common import litert_catalogue as registry
from workers.litert.service import LiteRTService
from workers.litert.tensors import encode_bytes_raw, TensorSpec, decode_input

pytest.importorskip("ai_edge_litert")


class Recorder:
    """What the worker's registry announced (the worker tells the broker the same)."""
    def __init__(self):
        self.loaded, self.unloaded = [], []
        self.models = ModelRegistry(on_loaded=lambda record, version: self.loaded.append(record),
                                    on_unloaded=lambda model_id, version: self.unloaded.append(model_id))


@pytest.fixture(scope="module")
def rec():
    return Recorder()


@pytest.fixture(scope="module")
def svc(rec, tmp_path_factory):
    s = LiteRTService({"threads": 2, "auto_load": True, "cache_dir": str(tmp_path_factory.mktemp("cache"))},
                      models=rec.models, measure_memory=lambda: {"rss_mb": 100.0})
    yield s
    s.close()


def call(svc, method, msg, frame=None, **header):
    ctx, _ = make_test_context(method, payload=msg.SerializeToString(), frame=frame, **header)
    return svc.handlers()[method](ctx)


def load(svc, model_id, **options):
    raw = call(svc, "ml.ModelManagementService/LoadModel",
               ML.LoadModelRequest(model_id=model_id, pipeline_type="tflite", options=options))
    return ML.LoadModelResponse.FromString(raw)


def metadata(svc, name, version=""):
    raw = call(svc, "inference.GRPCInferenceService/ModelMetadata", K.ModelMetadataRequest(name=name, version=version))
    return K.ModelMetadataResponse.FromString(raw)


def infer_request(model, inputs, outputs=(), version="", params=None, typed=False):
    req = K.ModelInferRequest(model_name=model, model_version=version, id="req-1")
    for name, arr, dt in inputs:
        t = req.inputs.add(name=name, datatype=dt, shape=list(arr.shape))
        if typed:
            field = {"FP32": "fp32_contents", "INT8": "int_contents", "UINT8": "uint_contents"}[dt]
            getattr(t.contents, field).extend(arr.ravel().tolist())
        else:
            req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    for o in outputs:
        req.outputs.add(name=o)
    for k, v in (params or {}).items():
        if isinstance(v, bool):
            req.parameters[k].bool_param = v
        else:
            req.parameters[k].string_param = str(v)
    return req


def infer(svc, req):
    raw = call(svc, "inference.GRPCInferenceService/ModelInfer", req)
    resp = K.ModelInferResponse.FromString(raw)
    out = {}
    for o, data in zip(resp.outputs, resp.raw_output_contents):
        dtype = {"FP32": np.float32, "UINT8": np.uint8, "INT8": np.int8}[o.datatype]
        out[o.name] = np.frombuffer(data, dtype=dtype).reshape(list(o.shape))
    return resp, out


def expect_error(code, fn, *args, contains=()):
    with pytest.raises(WorkerError) as ei:
        fn(*args)
    assert ei.value.code == code, ei.value.message
    for text in contains:
        assert text in ei.value.message, ei.value.message
    return ei.value.message


def face_req(image="grace_hopper.jpg", **kw):
    return infer_request(FACE_MODEL, [("input", face_input(image), "FP32")], **kw)


# ---- registry / loading ----------------------------------------------------------------------

def test_builtin_aliases_are_the_bundled_tflite_files():
    names = registry.short_names()
    for stem in ("face_detection_short_range", "palm_detection_lite", "selfie_segmentation",
                 "face_landmark_with_attention"):
        assert stem in names
    path = registry.resolve("mediapipe/face_detection_short_range")
    assert path and path.endswith("face_detection/face_detection_short_range.tflite") and os.path.isfile(path)
    assert registry.resolve("face_detection_short_range.tflite") == path


def test_load_reports_memory_signatures_and_registry(svc, rec):
    resp = load(svc, FACE_MODEL)
    assert resp.success and resp.ram_allocated_mb >= 0
    assert "input FP32 [1,128,128,3]" in resp.message and "classificators FP32 [1,896,1]" in resp.message
    r = [x for x in rec.loaded if x.model_id == FACE_MODEL][-1]
    assert r.pipeline_type == "tflite" and r.ram_mb > 0
    replay = ML.LoadModelRequest.FromString(r.load_payload)
    assert replay.model_id == FACE_MODEL
    ready = K.ModelReadyResponse.FromString(call(svc, "inference.GRPCInferenceService/ModelReady",
                                                 K.ModelReadyRequest(name=FACE_MODEL)))
    assert ready.ready


def test_face_detector_metadata(svc):
    md = metadata(svc, FACE_MODEL)
    assert md.platform == "tflite" and list(md.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("input", "FP32", [1, 128, 128, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.outputs] == [
        ("regressors", "FP32", [1, 896, 16]), ("classificators", "FP32", [1, 896, 1])]


def test_face_detector_portrait_above_fish_below(svc):
    resp, out = infer(svc, face_req("grace_hopper.jpg"))
    assert resp.id == "req-1" and resp.model_name == FACE_MODEL and resp.model_version == "1"
    portrait = best_face_score(out["classificators"])
    _, out = infer(svc, face_req("happyfish.jpg"))
    fish = best_face_score(out["classificators"])
    assert portrait > 0.5 > fish, (portrait, fish)
    assert out["regressors"].shape == (1, 896, 16)


def test_typed_contents_equal_raw_and_requested_outputs_honoured(svc):
    _, raw = infer(svc, face_req(outputs=["classificators"]))
    resp, typed = infer(svc, face_req(outputs=["classificators", "regressors"], typed=True))
    assert list(raw) == ["classificators"]
    assert [o.name for o in resp.outputs] == ["classificators", "regressors"]
    np.testing.assert_array_equal(raw["classificators"], typed["classificators"])


def test_boolean_options_and_parameters_are_read_by_the_one_reader(svc):
    """common/options.as_bool: a typo is INVALID_ARGUMENT naming the option, never a silent "false"."""
    expect_error("INVALID_ARGUMENT", infer, svc, face_req(params={"reset_state": "maybe"}),
                 contains=("reset_state='maybe' is not a boolean",))
    expect_error("INVALID_ARGUMENT", lambda: load(svc, "face_typo", alias=FACE_MODEL, xnnpack="ture"),
                 contains=("xnnpack='ture' is not a boolean",))
    resp, out = infer(svc, face_req(params={"sequence_start": "Yes"}))   # case and spaces ignored
    assert best_face_score(out["classificators"]) > 0.5
    assert "face_typo" not in svc.loaded()


def test_xnnpack_off_and_threads_give_the_same_scores(svc):
    resp = load(svc, "face_ref", alias=FACE_MODEL, xnnpack="false", threads="2")
    assert "cpu-reference" in resp.message and "2 thread(s)" in resp.message
    req = face_req()
    req.model_name = "face_ref"
    _, ref = infer(svc, req)
    _, fast = infer(svc, face_req())
    np.testing.assert_allclose(ref["classificators"], fast["classificators"], atol=1e-3)


def test_gpu_delegate_falls_back_to_cpu_with_a_clear_message():
    # the delegate library is an operator setting (--litert-gpu-delegate-library), a worker option
    svc = LiteRTService({"threads": 1, "gpu_delegate_library": "libdoes_not_exist.so"})
    resp = load(svc, "face_gpu", alias=FACE_MODEL, gpu_delegate="true")
    assert resp.success
    assert "GPU delegate unavailable" in resp.message and "libdoes_not_exist.so" in resp.message
    assert "running on the CPU" in resp.message
    req = face_req()
    req.model_name = "face_gpu"
    _, out = infer(svc, req)
    assert best_face_score(out["classificators"]) > 0.5
    svc.close()


# ---- full-int8 model with resource variables ------------------------------------------------

def test_int8_wakeword_metadata_and_quantised_outputs(svc):
    resp = load(svc, WAKEWORD_MODEL)
    assert "INT8 [1,3,40] (scale 0.10196" in resp.message and "zero point -128" in resp.message
    assert "stateful" in resp.message
    md = metadata(svc, WAKEWORD_MODEL)
    assert list(md.versions) == ["serving_default"]
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("input_audio", "INT8", [1, 3, 40])]
    assert [(t.datatype, list(t.shape)) for t in md.outputs] == [("UINT8", [1, 1])]
    x = wakeword_windows(0.10196078568696976, -128, limit=1)[0]
    resp, out = infer(svc, infer_request(WAKEWORD_MODEL, [("input_audio", x, "INT8")], params={"reset_state": True}))
    (o,) = resp.outputs
    assert o.datatype == "UINT8" and out[o.name].dtype == np.uint8
    assert o.parameters["quantization_scale"].double_param == pytest.approx(0.00390625)
    assert o.parameters["quantization_zero_point"].int64_param == 0
    assert resp.parameters["stateful"].bool_param


def test_wakeword_state_is_kept_and_reset_on_request(svc):
    load(svc, WAKEWORD_MODEL)
    windows = wakeword_windows(0.10196078568696976, -128, limit=40)
    name = [t.name for t in metadata(svc, WAKEWORD_MODEL).outputs][0]

    def run(reset_first):
        outs = []
        for i, x in enumerate(windows):
            params = {"reset_state": True} if (reset_first and i == 0) else None
            _, out = infer(svc, infer_request(WAKEWORD_MODEL, [("input_audio", x, "INT8")], params=params))
            outs.append(int(out[name][0, 0]))
        return outs

    fresh = run(reset_first=True)
    continued = run(reset_first=False)   # same audio again, on top of the state left by the first pass
    again = run(reset_first=True)
    assert fresh == again, "reset_state must give the same outputs as a freshly loaded model"
    assert fresh != continued, "the model's streaming state should change its outputs"
    assert any(fresh), "real speech should produce some non-zero probabilities"


def test_signature_selected_by_version_or_parameter(svc):
    x = wakeword_windows(0.10196078568696976, -128, limit=1)[0]
    resp, _ = infer(svc, infer_request(WAKEWORD_MODEL, [("input_audio", x, "INT8")], version="serving_default"))
    assert resp.model_version == "serving_default"
    resp, _ = infer(svc, infer_request(WAKEWORD_MODEL, [("input_audio", x, "INT8")], params={"signature": "serving_default"}))
    assert resp.model_version == "serving_default"
    expect_error("NOT_FOUND", infer, svc, infer_request(WAKEWORD_MODEL, [("input_audio", x, "INT8")], version="train"),
                 contains=("no version/signature 'train'", "serving_default"))


# ---- bad input: precise status, service stays usable ----------------------------------------

def test_bad_inputs_give_precise_errors(svc):
    x = face_input("grace_hopper.jpg")
    expect_error("INVALID_ARGUMENT", infer, svc, infer_request(FACE_MODEL, [("image", x, "FP32")]),
                 contains=("no input 'image'", "input FP32 [1,128,128,3]"))
    expect_error("INVALID_ARGUMENT", infer, svc, infer_request(FACE_MODEL, [("input", x.astype(np.float64), "FP64")]),
                 contains=("input 'input': expected FP32 [1,128,128,3] (196608 bytes)", "got datatype FP64"))
    expect_error("INVALID_ARGUMENT", infer, svc, infer_request(FACE_MODEL, [("input", x[:, :64], "FP32")]),
                 contains=("expected FP32 [1,128,128,3]", "got shape [1,64,128,3]"))
    req = face_req()
    req.raw_input_contents[0] = req.raw_input_contents[0][:1000]
    expect_error("INVALID_ARGUMENT", infer, svc, req, contains=("(196608 bytes), got 1000 bytes",))
    req = face_req()
    req.raw_input_contents.append(b"extra")
    expect_error("INVALID_ARGUMENT", infer, svc, req, contains=("2 raw_input_contents for 1 inputs",))
    expect_error("INVALID_ARGUMENT", infer, svc, infer_request(FACE_MODEL, []), contains=("missing",))
    expect_error("INVALID_ARGUMENT", infer, svc, face_req(outputs=["scores"]),
                 contains=("no output 'scores'", "classificators"))
    bad = face_req(typed=True)
    bad.inputs[0].contents.fp32_contents.pop()
    expect_error("INVALID_ARGUMENT", infer, svc, bad, contains=("expected 49152 values", "got 49151"))
    wk = infer_request(WAKEWORD_MODEL, [("input_audio", np.zeros((1, 3, 40), np.int32), "INT8")], typed=True)
    wk.inputs[0].contents.int_contents[0] = 300
    expect_error("INVALID_ARGUMENT", infer, svc, wk, contains=("outside the INT8 range",))
    # and the model still answers
    _, out = infer(svc, face_req())
    assert best_face_score(out["classificators"]) > 0.5


def test_unresolved_custom_op_is_failed_precondition(svc):
    msg = expect_error("FAILED_PRECONDITION", load, svc, "face_landmark_with_attention",
                       contains=("custom op 'Landmarks2TransformMatrix'",))
    assert "face_landmark_with_attention" in msg
    ready = K.ModelReadyResponse.FromString(call(svc, "inference.GRPCInferenceService/ModelReady",
                                                 K.ModelReadyRequest(name="face_landmark_with_attention")))
    assert not ready.ready
    # through auto-load on ModelInfer too
    expect_error("FAILED_PRECONDITION", infer, svc,
                 infer_request("face_landmark_with_attention", [("input_1", np.zeros((1, 192, 192, 3), np.float32), "FP32")]),
                 contains=("Landmarks2TransformMatrix",))


def test_not_a_tflite_file_and_unknown_model(svc):
    assets = LiteRTService({"threads": 1, "model_dirs": [ASSETS]})   # a file inside a --model-dir
    expect_error("INVALID_ARGUMENT", _load_path, assets, "jpeg", os.path.join(ASSETS, "happyfish.jpg"),
                 contains=("not a .tflite flatbuffer", "TFL3"))
    expect_error("NOT_FOUND", _load_path, assets, "x", os.path.join(ASSETS, "no_such.tflite"), contains=("does not exist",))
    assets.close()
    expect_error("NOT_FOUND", load, svc, "no_such_model_xyz", contains=("not found", "built-in alias"))
    # outside the model folders: refused without saying whether the file exists
    expect_error("PERMISSION_DENIED", _load_path, svc, "x", "/nonexistent/model.tflite",
                 contains=("not inside", "model folders"))
    expect_error("INVALID_ARGUMENT", load, svc, "")


def _load_path(svc, model_id, path):
    return load(svc, model_id, path=path)


def test_auto_load_off_requires_an_explicit_load():
    s = LiteRTService({"threads": 1, "auto_load": False})
    expect_error("NOT_FOUND", infer, s, face_req(), contains=("is not loaded",))
    load(s, FACE_MODEL)
    _, out = infer(s, face_req())
    assert best_face_score(out["classificators"]) > 0.5
    s.close()


def test_unload_and_registry_callbacks(svc, rec):
    load(svc, "face_tmp", alias=FACE_MODEL)
    raw = call(svc, "ml.ModelManagementService/UnloadModel", ML.UnloadModelRequest(model_id="face_tmp"))
    assert ML.StatusResponse.FromString(raw).success
    assert "face_tmp" in rec.unloaded
    ready = K.ModelReadyResponse.FromString(call(svc, "inference.GRPCInferenceService/ModelReady",
                                                 K.ModelReadyRequest(name="face_tmp")))
    assert not ready.ready
    expect_error("NOT_FOUND", call, svc, "ml.ModelManagementService/UnloadModel", ML.UnloadModelRequest(model_id="face_tmp"))


def test_load_from_uploaded_bytes_is_replayable(svc, rec):
    data = open(registry.resolve(FACE_MODEL), "rb").read()
    raw = call(svc, "ml.ModelManagementService/LoadModel",
               ML.LoadModelRequest(model_id="uploaded_face", options={"content": "frame"}), frame=data)
    assert ML.LoadModelResponse.FromString(raw).success
    r = [x for x in rec.loaded if x.model_id == "uploaded_face"][-1]
    replay = ML.LoadModelRequest.FromString(r.load_payload)
    assert "content" not in replay.options and open(replay.options["path"], "rb").read() == data
    req = face_req()
    req.model_name = "uploaded_face"
    _, out = infer(svc, req)
    assert best_face_score(out["classificators"]) > 0.5


class _FileService(MLG.ModelManagementServiceServicer):
    def __init__(self, files):
        self.files = files
        self.requests = []

    def GetModelFile(self, request, context):
        import grpc
        self.requests.append((request.model_id, request.file_path))
        data = self.files.get((request.model_id, request.file_path))
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no file {request.file_path} for {request.model_id}")
        step = 64 * 1024
        for off in range(0, len(data), step):
            yield ML.ModelFileChunk(data=data[off:off + step], offset=off, total_size=len(data),
                                    is_last=off + step >= len(data))


def test_load_from_the_orchestrator_file_service(tmp_path):
    import grpc
    data = open(registry.resolve(FACE_MODEL), "rb").read()
    fs = _FileService({("acme/face-detector", "model.tflite"): data})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    MLG.add_ModelManagementServiceServicer_to_server(fs, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        svc = LiteRTService({"threads": 1, "model_file_service": f"127.0.0.1:{port}",
                             "cache_dir": str(tmp_path / "cache")})
        resp = load(svc, "acme/face-detector")
        assert resp.success and "file service" in resp.message
        assert fs.requests == [("acme/face-detector", "model.tflite")]
        req = face_req()
        req.model_name = "acme/face-detector"
        _, out = infer(svc, req)
        assert best_face_score(out["classificators"]) > 0.5
        with pytest.raises(WorkerError) as ei:
            load(svc, "acme/missing")
        assert ei.value.code == "NOT_FOUND" and "no file model.tflite for acme/missing" in ei.value.message
    finally:
        server.stop(0)
        svc.close()
    s2 = LiteRTService({"threads": 1, "model_file_service": "127.0.0.1:1"})
    expect_error("UNAVAILABLE", load, s2, "acme/other", contains=("model file service 127.0.0.1:1",))


def test_concurrent_calls_on_one_model_are_serialised(svc):
    load(svc, FACE_MODEL)
    x = face_req()
    errors, scores = [], []

    def worker():
        try:
            for _ in range(10):
                _, out = infer(svc, x)
                scores.append(best_face_score(out["classificators"]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(scores) == 40 and max(scores) - min(scores) < 1e-6


def test_bytes_tensors_roundtrip():
    spec = TensorSpec("s", "BYTES", [2])
    t = K.ModelInferRequest.InferInputTensor(name="s", datatype="BYTES", shape=[2])
    arr = decode_input(t, encode_bytes_raw(np.array([b"ab", b""], dtype=object)), spec)
    assert list(arr) == [b"ab", b""]
    with pytest.raises(WorkerError, match="left over"):
        decode_input(t, encode_bytes_raw(np.array([b"ab", b"", b"c"], dtype=object)), spec)


def test_worker_adapter_reports_loads_to_the_broker(tmp_path):
    import json
    from workers.base import worker_arg_parser
    from workers.litert_worker import LiteRTWorker
    args = worker_arg_parser("litert").parse_args(
        ["--connect", "ipc:///nonexistent", "--worker-id", "litert-test",
         "--options-json", json.dumps({"threads": 1, "cache_dir": str(tmp_path)})])
    w = LiteRTWorker(args)
    w.setup()
    assert set(w.handlers()) >= {"inference.GRPCInferenceService/ModelInfer",
                                 "inference.GRPCInferenceService/ModelMetadata",
                                 "inference.GRPCInferenceService/ModelReady",
                                 "ml.ModelManagementService/LoadModel", "ml.ModelManagementService/UnloadModel"}
    load(w.service, FACE_MODEL)
    assert w.models[FACE_MODEL].ram_mb > 0 and w.models[FACE_MODEL].pipeline_type == "tflite"
    # one registry: the worker's record carries the instance the handlers run (no second dict in the service)
    assert w.service.models is w.models and w.service.loaded()[FACE_MODEL] is w.models[FACE_MODEL].runtime
    assert w.models[FACE_MODEL].runtime.model_id == FACE_MODEL and w.models.version == 1
    assert not w._outq.empty()  # LOADED went to the broker queue
    call(w.service, "ml.ModelManagementService/UnloadModel", ML.UnloadModelRequest(model_id=FACE_MODEL))
    assert FACE_MODEL not in w.models and w.models.version == 2 and not w.service.loaded()


def test_raw_inputs_from_the_shared_memory_frame(svc):
    """Big raw inputs arrive in the request's frame (the facade moves them), cut by header raw_lengths."""
    req = face_req()
    raw = req.raw_input_contents[0]
    del req.raw_input_contents[:]
    ctx, _ = make_test_context("inference.GRPCInferenceService/ModelInfer", payload=req.SerializeToString(),
                               frame=raw, raw_lengths=[len(raw)])
    resp = K.ModelInferResponse.FromString(svc.model_infer(ctx))
    scores = np.frombuffer(resp.raw_output_contents[1], np.float32)
    assert best_face_score(scores) > 0.5
    ctx, _ = make_test_context("inference.GRPCInferenceService/ModelInfer", payload=req.SerializeToString(),
                               frame=raw[:100], raw_lengths=[len(raw)])
    with pytest.raises(WorkerError) as ei:
        svc.model_infer(ctx)
    assert ei.value.code == "INTERNAL" and "holds 100 bytes" in ei.value.message
