"""`python run.py call infer MODEL INPUT.npy [...]`: run a LiteRT model through the KServe v2 API.

MODEL is a loaded model, a built-in alias (e.g. face_detection_short_range) or a .tflite path readable
by the service. Inputs are .npy files (one per model input, in the model's order, or named with
--input) or one .npz whose keys are input names. Prints each output's datatype, shape, a numeric
summary and, for quantised outputs, the scale / zero point and the dequantised range.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

_DT = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
       "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
       "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


def _shape(s) -> str:
    return "[" + ",".join(str(int(d)) for d in s) + "]"


def _load_inputs(paths, names, meta_inputs) -> list:
    arrays = []
    if len(paths) == 1 and paths[0].endswith(".npz"):
        with np.load(paths[0]) as z:
            return [(k, z[k]) for k in z.files]
    for i, p in enumerate(paths):
        if names and i < len(names):
            name = names[i]
        elif i < len(meta_inputs):
            name = meta_inputs[i].name
        else:
            raise SystemExit(f"infer: {len(paths)} inputs given but the model has {len(meta_inputs)}")
        arrays.append((name, np.load(p, allow_pickle=False)))
    return arrays


def cmd_infer(args, channel) -> int:
    from protos.kserve import grpc_service_pb2 as K
    from protos.kserve import grpc_service_pb2_grpc as KG

    stub = KG.GRPCInferenceServiceStub(channel)
    model = args.model
    if model.endswith(".tflite") and os.path.exists(model):
        model = os.path.abspath(model)
    meta = stub.ModelMetadata(K.ModelMetadataRequest(name=model, version=args.version), timeout=args.timeout)
    by_name = {t.name: t for t in meta.inputs}
    req = K.ModelInferRequest(model_name=model, model_version=args.version, id="cli")
    for name, arr in _load_inputs(args.inputs, args.input, list(meta.inputs)):
        spec = by_name.get(name)
        if spec is not None and spec.datatype in _DT:
            want = np.dtype(_DT[spec.datatype])
            if arr.dtype != want and arr.dtype.kind == want.kind == "f":
                print(f"note: input '{name}' cast from {arr.dtype} to {want}", file=sys.stderr)
                arr = arr.astype(want)
        datatype = next((k for k, v in _DT.items() if np.dtype(v) == arr.dtype), None)
        if datatype is None:
            raise SystemExit(f"infer: input '{name}' has dtype {arr.dtype}, which has no KServe datatype")
        req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    for o in args.output or []:
        req.outputs.add(name=o)
    if args.reset_state:
        req.parameters["reset_state"].bool_param = True
    t0 = time.perf_counter()
    resp = stub.ModelInfer(req, timeout=args.timeout)
    ms = (time.perf_counter() - t0) * 1000
    print(f"model {resp.model_name} (version {resp.model_version or '-'}, platform {meta.platform}): "
          f"{len(resp.outputs)} output(s) in {ms:.2f} ms round trip")
    saved = {}
    for out, raw in zip(resp.outputs, resp.raw_output_contents):
        if out.datatype not in _DT:
            print(f"  {out.name:24s} {out.datatype} {_shape(out.shape)} ({len(raw)} bytes)")
            continue
        arr = np.frombuffer(raw, dtype=_DT[out.datatype]).reshape(list(out.shape))
        saved[out.name] = arr
        line = f"  {out.name:24s} {out.datatype} {_shape(out.shape)}"
        if arr.size:
            a = arr.astype(np.float64)
            line += f"  min {a.min():.6g} max {a.max():.6g} mean {a.mean():.6g}"
            flat_arg = int(np.argmax(a))
            line += f" argmax {flat_arg}"
        if "quantization_scale" in out.parameters:
            s = out.parameters["quantization_scale"].double_param
            z = out.parameters["quantization_zero_point"].int64_param
            deq = (arr.astype(np.float64) - z) * s
            line += f"  (scale {s:.6g}, zero point {z}; dequantised {deq.min():.6g}..{deq.max():.6g})"
        print(line)
    if args.save:
        np.savez(args.save, **saved)
        print(f"saved outputs to {args.save}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("infer", help="run a LiteRT .tflite model on .npy input(s) through the KServe v2 API")
    p.add_argument("model", help="loaded model name, built-in alias (e.g. face_detection_short_range) or .tflite path")
    p.add_argument("inputs", nargs="+", help=".npy file per input (model order) or one .npz keyed by input name")
    p.add_argument("--input", action="append", help="input name for the matching .npy (repeatable)")
    p.add_argument("--output", action="append", help="only return this output (repeatable)")
    p.add_argument("--version", default="", help="model version = signature key (default: the default signature)")
    p.add_argument("--reset-state", action="store_true", help="forget a stateful model's streaming state first")
    p.add_argument("--save", default="", help="write the outputs to this .npz")
    p.set_defaults(func=cmd_infer)
