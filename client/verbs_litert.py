"""`python run.py call infer MODEL INPUT.npy [...]`: run a LiteRT model through the KServe v2 API.

MODEL is a loaded model, a built-in alias (e.g. face_detection_short_range) or a .tflite path readable
by the service. Inputs are .npy files (one per model input, in the model's order, or named with
--input), one .npz whose keys are input names, or an image (jpg/png) for an image input
([1,H,W,3] or [1,3,H,W]): resized to H x W, RGB, scaled to --image-range for a float input
(default -1,1, MediaPipe's convention), raw 0-255 pixels for a uint8 one. Prints each output's datatype, shape, a numeric
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


IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_input(path: str, spec, value_range=(-1.0, 1.0)) -> np.ndarray:
    """An image file as the model input `spec` (KServe tensor metadata) wants it: [1,H,W,3] (or [1,3,H,W]),
    RGB, resized; float inputs scaled to value_range, uint8 inputs raw pixels."""
    import cv2
    shape = [int(d) for d in spec.shape]
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise SystemExit(f"infer: input '{spec.name}' has shape {_shape(shape)}, not an image ([1,H,W,3] or [1,3,H,W])")
    chw = shape[1] == 3 and shape[3] != 3
    h, w = (shape[2], shape[3]) if chw else (shape[1], shape[2])
    if h <= 0 or w <= 0:
        raise SystemExit(f"infer: input '{spec.name}' has no fixed size ({_shape(shape)}); send a .npy")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"infer: cannot read image {path}")
    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_AREA)
    if spec.datatype == "UINT8":
        x = rgb
    elif spec.datatype in ("FP32", "FP16", "FP64"):
        lo, hi = value_range
        x = (rgb.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(_DT[spec.datatype])
    else:
        raise SystemExit(f"infer: input '{spec.name}' is {spec.datatype}; an image fills FP32/FP16/UINT8 inputs only")
    x = x[None]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if chw else x


def _load_inputs(paths, names, meta_inputs, value_range=(-1.0, 1.0)) -> list:
    arrays = []
    if len(paths) == 1 and paths[0].endswith(".npz"):
        with np.load(paths[0]) as z:
            return [(k, z[k]) for k in z.files]
    by_name = {t.name: t for t in meta_inputs}
    for i, p in enumerate(paths):
        if names and i < len(names):
            name = names[i]
        elif i < len(meta_inputs):
            name = meta_inputs[i].name
        else:
            raise SystemExit(f"infer: {len(paths)} inputs given but the model has {len(meta_inputs)}")
        if p.lower().endswith(IMAGE_EXT):
            if name not in by_name:
                raise SystemExit(f"infer: the model has no input '{name}'")
            arrays.append((name, image_input(p, by_name[name], value_range)))
        else:
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
    try:
        lo, hi = (float(v) for v in args.image_range.split(","))
    except ValueError:
        raise SystemExit(f"infer: --image-range takes LOW,HIGH, got {args.image_range!r}") from None
    for name, arr in _load_inputs(args.inputs, args.input, list(meta.inputs), (lo, hi)):
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
    p = sub.add_parser("infer", help="run a LiteRT .tflite model on .npy (or image) input(s) through the KServe v2 API")
    p.add_argument("model", help="loaded model name, built-in alias (e.g. face_detection_short_range) or .tflite path")
    p.add_argument("inputs", nargs="+", help=".npy file per input (model order), one .npz keyed by input name, "
                                             "or an image (jpg/png) for an image input")
    p.add_argument("--image-range", default="-1,1", help="an image for a float input is scaled to LOW,HIGH (default -1,1)")
    p.add_argument("--input", action="append", help="input name for the matching .npy (repeatable)")
    p.add_argument("--output", action="append", help="only return this output (repeatable)")
    p.add_argument("--version", default="", help="model version = signature key (default: the default signature)")
    p.add_argument("--reset-state", action="store_true", help="forget a stateful model's streaming state first")
    p.add_argument("--save", default="", help="write the outputs to this .npz")
    p.set_defaults(func=cmd_infer)
