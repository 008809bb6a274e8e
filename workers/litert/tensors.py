"""KServe v2 tensors <-> numpy.

- datatype names (BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES) <-> numpy dtypes;
- decoding one request input from ``raw_input_contents`` (row-major bytes, BYTES as 4-byte little-endian
  length + data per element) or from typed ``InferTensorContents``, validated against the model's spec
  (name, datatype, shape with -1 wildcards, byte / element count) with messages that say what was
  expected and what arrived;
- encoding outputs as raw bytes;
- quantisation parameters of int8/uint8 tensors as KServe InferParameters.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from workers.context import WorkerError

_DT_TO_NP = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NP_TO_DT = {v: k for k, v in _DT_TO_NP.items()}
_NP_TO_DT[np.dtype(np.bytes_)] = "BYTES"

# typed InferTensorContents field per datatype (FP16 has none: it travels as raw bytes only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def datatype_of(dtype) -> str:
    """KServe datatype name of a numpy dtype (LiteRT string tensors -> BYTES)."""
    dt = np.dtype(dtype)
    if dt.kind in ("S", "O", "U"):
        return "BYTES"
    name = _NP_TO_DT.get(dt)
    if name is None:
        raise WorkerError("UNIMPLEMENTED", f"tensor type {dt} has no KServe v2 datatype")
    return name


def numpy_dtype(datatype: str) -> np.dtype:
    dt = _DT_TO_NP.get(datatype)
    if dt is None:
        raise WorkerError("INVALID_ARGUMENT",
                          f"unknown datatype {datatype!r}; expected one of {', '.join(_DT_TO_NP)}")
    return dt


@dataclass
class TensorSpec:
    """One model input or output as the API shows it."""
    name: str                       # API name (signature key name, or the tensor name)
    datatype: str                   # KServe datatype
    shape: list                     # current shape, -1 where the model accepts any size
    index: int = -1                 # LiteRT tensor index
    tensor_name: str = ""           # LiteRT tensor name (may differ from `name` in signatures)
    scales: list = field(default_factory=list)       # quantisation scales (per tensor or per channel)
    zero_points: list = field(default_factory=list)
    quantized_dimension: int = 0

    @property
    def dtype(self) -> np.dtype:
        return _DT_TO_NP[self.datatype]

    @property
    def quantized(self) -> bool:
        return bool(self.scales) and any(s != 0.0 for s in self.scales)

    def describe(self) -> str:
        text = f"{self.name} {self.datatype} {fmt_shape(self.shape)}"
        if self.quantized:
            text += f" (scale {self.scales[0]:.6g}, zero point {self.zero_points[0]})"
        return text


def spec_from_details(name: str, details: dict) -> TensorSpec:
    """TensorSpec from an ai_edge_litert tensor-details dict."""
    sig = details.get("shape_signature")
    shape = [int(d) for d in (sig if sig is not None and len(sig) else details["shape"])]
    q = details.get("quantization_parameters") or {}
    scales = [float(s) for s in np.asarray(q.get("scales", []), dtype=np.float64).ravel()]
    zps = [int(z) for z in np.asarray(q.get("zero_points", []), dtype=np.int64).ravel()]
    if not scales:
        scale, zp = details.get("quantization", (0.0, 0))
        if scale:
            scales, zps = [float(scale)], [int(zp)]
    return TensorSpec(name=name, datatype=datatype_of(details["dtype"]), shape=shape,
                      index=int(details["index"]), tensor_name=str(details.get("name", name)),
                      scales=scales, zero_points=zps,
                      quantized_dimension=int(q.get("quantized_dimension", 0) or 0))


def fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def shape_matches(expected: Sequence[int], got: Sequence[int]) -> bool:
    return len(expected) == len(got) and all(e < 0 or e == g for e, g in zip(expected, got))


def _expected_text(spec: TensorSpec) -> str:
    text = f"{spec.datatype} {fmt_shape(spec.shape)}"
    if all(d >= 0 for d in spec.shape) and spec.datatype != "BYTES":
        text += f" ({int(np.prod(spec.shape, dtype=np.int64)) * spec.dtype.itemsize} bytes)"
    return text


def _decode_bytes_raw(name: str, raw: bytes, count: int) -> np.ndarray:
    items, pos = [], 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise WorkerError("INVALID_ARGUMENT",
                              f"input '{name}': BYTES raw contents end inside the length prefix of element {i} of {count}")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise WorkerError("INVALID_ARGUMENT",
                              f"input '{name}': BYTES element {i} claims {n} bytes but only {len(raw) - pos} remain")
        items.append(bytes(raw[pos:pos + n]))
        pos += n
    if pos != len(raw):
        raise WorkerError("INVALID_ARGUMENT",
                          f"input '{name}': {len(raw) - pos} bytes left over after {count} BYTES elements")
    arr = np.empty(count, dtype=np.object_)
    arr[:] = items
    return arr


def encode_bytes_raw(arr: np.ndarray) -> bytes:
    out = bytearray()
    for item in arr.ravel():
        b = item if isinstance(item, (bytes, bytearray)) else str(item).encode("utf-8")
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def decode_input(tensor, raw, spec: TensorSpec) -> np.ndarray:
    """Validate one ModelInferRequest.InferInputTensor (+ its raw bytes-like, if any) against `spec`.

    Returns a C-contiguous numpy array of spec.dtype and the request's shape.
    """
    name = tensor.name
    if tensor.datatype != spec.datatype:
        raise WorkerError("INVALID_ARGUMENT",
                          f"input '{name}': expected {_expected_text(spec)}, got datatype {tensor.datatype or '(empty)'}")
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise WorkerError("INVALID_ARGUMENT", f"input '{name}': shape {fmt_shape(shape)} has a negative dimension")
    if not shape_matches(spec.shape, shape):
        raise WorkerError("INVALID_ARGUMENT",
                          f"input '{name}': expected {_expected_text(spec)}, got shape {fmt_shape(shape)}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    dtype = spec.dtype
    has_contents = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
    if raw is not None:
        if has_contents:
            raise WorkerError("INVALID_ARGUMENT",
                              f"input '{name}': both raw_input_contents and typed contents were sent; send one")
        if spec.datatype == "BYTES":
            return _decode_bytes_raw(name, raw, count).reshape(shape)
        want = count * dtype.itemsize
        if len(raw) != want:
            raise WorkerError("INVALID_ARGUMENT",
                              f"input '{name}': expected {spec.datatype} {fmt_shape(shape)} ({want} bytes), "
                              f"got {len(raw)} bytes")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field_name = CONTENTS_FIELD.get(spec.datatype)
    if field_name is None:
        raise WorkerError("INVALID_ARGUMENT",
                          f"input '{name}': {spec.datatype} has no typed contents in KServe v2; send raw_input_contents")
    values = getattr(tensor.contents, field_name)
    if len(values) != count:
        raise WorkerError("INVALID_ARGUMENT",
                          f"input '{name}': expected {count} values in contents.{field_name} for shape "
                          f"{fmt_shape(shape)}, got {len(values)}")
    if spec.datatype == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        arr[:] = [bytes(v) for v in values]
        return arr.reshape(shape)
    arr = np.asarray(values)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise WorkerError("INVALID_ARGUMENT",
                              f"input '{name}': a value in contents.{field_name} is outside the {spec.datatype} range "
                              f"[{info.min}, {info.max}]")
    return np.ascontiguousarray(arr.astype(dtype, copy=False).reshape(shape))


def output_bytes(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_raw(arr)
    return np.ascontiguousarray(arr).tobytes()


def quant_parameters(spec: TensorSpec, params) -> None:
    """Fill a KServe `map<string, InferParameter>` with the tensor's quantisation (if it has one)."""
    if not spec.quantized:
        return
    params["quantization_scale"].double_param = float(spec.scales[0])
    params["quantization_zero_point"].int64_param = int(spec.zero_points[0]) if spec.zero_points else 0
    if len(spec.scales) > 1:  # per-channel: the first channel above, the full lists here
        params["quantization_scales"].string_param = ",".join(f"{s:.9g}" for s in spec.scales)
        params["quantization_zero_points"].string_param = ",".join(str(z) for z in spec.zero_points)
        params["quantized_dimension"].int64_param = int(spec.quantized_dimension)
