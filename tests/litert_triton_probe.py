"""Drive the running service with stock tritonclient[grpc] and print one JSON report on stdout.

Run as a separate process (`python tests/litert_triton_probe.py HOST:PORT`): tritonclient's bundled
protos define the same `inference.*` symbols as ours, so the two cannot share one Python process.
Used by tests/test_litert_service.py.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tritonclient.grpc as tg  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.litert_inputs import FACE_MODEL, best_face_score, face_input, wakeword_windows  # noqa: E402


def error_of(fn):
    try:
        fn()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return None


def face_infer(client, image, outputs=None, model=FACE_MODEL):
    inp = tg.InferInput("input", [1, 128, 128, 3], "FP32")
    inp.set_data_from_numpy(face_input(image))
    req_out = [tg.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, [inp], outputs=req_out, request_id="probe-1")


def main(address: str, wake_path: str) -> dict:
    r: dict = {}
    client = tg.InferenceServerClient(address)
    r["live"] = client.is_server_live()
    r["ready"] = client.is_server_ready()
    md = client.get_server_metadata()
    r["server"] = {"name": md.name, "extensions": list(md.extensions)}

    # repository load of a built-in alias, then metadata and inference
    client.load_model(FACE_MODEL)
    r["face_ready"] = client.is_model_ready(FACE_MODEL)
    idx = client.get_model_repository_index()
    r["index"] = {m.name: m.state for m in idx.models}
    meta = client.get_model_metadata(FACE_MODEL)
    r["face_meta"] = {"platform": meta.platform, "versions": list(meta.versions),
                      "inputs": [(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
                      "outputs": [(t.name, t.datatype, list(t.shape)) for t in meta.outputs]}
    res = face_infer(client, "grace_hopper.jpg")
    r["portrait_score"] = best_face_score(res.as_numpy("classificators"))
    r["regressors_shape"] = list(res.as_numpy("regressors").shape)
    r["response_id"] = res.get_response().id
    res = face_infer(client, "happyfish.jpg", outputs=["classificators"])
    r["fish_score"] = best_face_score(res.as_numpy("classificators"))
    r["fish_outputs"] = [o.name for o in res.get_response().outputs]

    # full-int8 model uploaded as bytes through the repository extension (Triton's file: override)
    with open(wake_path, "rb") as f:
        client.load_model("wake_uploaded", config='{"backend": "litert"}', files={"file:1/model.tflite": f.read()})
    wmeta = client.get_model_metadata("wake_uploaded")
    r["wake_meta"] = {"inputs": [(t.name, t.datatype, list(t.shape)) for t in wmeta.inputs],
                      "outputs": [(t.name, t.datatype, list(t.shape)) for t in wmeta.outputs],
                      "versions": list(wmeta.versions)}
    x = wakeword_windows(0.10196078568696976, -128, limit=1)[0]
    inp = tg.InferInput("input_audio", [1, 3, 40], "INT8")
    inp.set_data_from_numpy(x)
    res = client.infer("wake_uploaded", [inp], parameters={"reset_state": True})
    out = res.get_response().outputs[0]
    arr = res.as_numpy(out.name)
    r["wake_out"] = {"name": out.name, "datatype": out.datatype, "dtype": str(arr.dtype), "shape": list(arr.shape),
                     "scale": out.parameters["quantization_scale"].double_param,
                     "zero_point": out.parameters["quantization_zero_point"].int64_param}

    # bad inputs: each one a precise status; the worker stays up
    def bad(name="input", dtype="FP32", arr=None):
        arr = face_input("grace_hopper.jpg") if arr is None else arr
        i = tg.InferInput(name, list(arr.shape), dtype)
        i.set_data_from_numpy(arr)
        return lambda: client.infer(FACE_MODEL, [i])
    x = face_input("grace_hopper.jpg")
    r["err_name"] = error_of(bad(name="image"))
    r["err_dtype"] = error_of(bad(dtype="FP64", arr=x.astype(np.float64)))
    r["err_shape"] = error_of(bad(arr=x[:, :64]))
    stub = service_pb2_grpc.GRPCInferenceServiceStub(client._channel)  # raw request: short byte count
    req = service_pb2.ModelInferRequest(model_name=FACE_MODEL)
    req.inputs.add(name="input", datatype="FP32", shape=[1, 128, 128, 3])
    req.raw_input_contents.append(x.tobytes()[:1000])
    try:
        stub.ModelInfer(req)
        r["err_bytes"] = None
    except Exception as exc:  # grpc.RpcError
        r["err_bytes"] = {"status": str(exc.code()), "message": exc.details()}
    r["err_output"] = error_of(lambda: face_infer(client, "grace_hopper.jpg", outputs=["scores"]))
    r["err_custom_op"] = error_of(lambda: client.load_model("face_landmark_with_attention"))
    r["err_unknown_model"] = error_of(lambda: client.get_model_metadata("no_such_model_xyz"))
    r["after_errors_score"] = best_face_score(face_infer(client, "grace_hopper.jpg").as_numpy("classificators"))

    # unload: gone from the index and not ready; unloading again is NOT_FOUND
    client.unload_model("wake_uploaded")
    r["wake_ready_after_unload"] = client.is_model_ready("wake_uploaded")
    r["index_after_unload"] = {m.name: m.state for m in client.get_model_repository_index().models}
    r["err_unload_again"] = error_of(lambda: client.unload_model("wake_uploaded"))
    client.close()
    return r


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
