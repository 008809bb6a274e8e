"""Bad-input suite: one row per RPC of every service we serve, each a list of hostile inputs.

Inputs: malformed protobuf, empty, oversized, wrong types, NaN/inf, unknown model, path traversal,
invalid UTF-8 in strings (hand-built wire messages), absurd max_length, truncated streams, and a client
that opens 1,000 streams and never sends. Every case asserts the exact status code and a piece of the
message a person can act on; after each row the service must still be healthy (health SERVING, the
row's pool answers). The count of cases tried is printed (and checked against the table).

Requests go out as raw bytes through generic stubs, so a case can be any bytes: a serialized message, a
hand-built wire message, or garbage. Services added to protos/pythonml.proto later (speech, pipelines)
get generic rows (malformed and invalid UTF-8 -> INVALID_ARGUMENT) automatically.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Optional

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from protos.kserve import grpc_service_pb2 as K
from tests.service import start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

C = grpc.StatusCode
OK = None          # expected "code" for a call that must succeed
AS_EMPTY = "same answer as an empty request"   # protobuf skips a field of the wrong wire type as unknown
MAX_MESSAGE_MB = 4
ASSETS = os.path.join(os.path.dirname(__file__), "assets")


# ------------------------------------------------------------------ wire helpers
def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field (string / bytes / sub-message) on the wire, whatever its content."""
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


BAD_UTF8 = b"caf\xc3\x28 \xff\xfe"
MALFORMED = b"\x0a\xff\xff\xff\x0f"            # field 1, length far beyond the message
TRUNCATED = b"\x0a\x10abc"                      # field 1 says 16 bytes, 3 follow
WRONG_TYPE = field_varint(1, 7)                 # field 1 sent as a varint where a string is declared


def ser(msg) -> bytes:
    return msg.SerializeToString()


@dataclass
class Case:
    name: str
    request: object                 # bytes, or list of bytes for a client stream
    code: Optional[grpc.StatusCode]  # None = must succeed
    needle: str = ""                # part of the error message (case-insensitive)
    timeout: float = 60.0


U, S, CS, B = "unary", "server-stream", "client-stream", "bidi"


def jpeg_bytes() -> bytes:
    with open(os.path.join(ASSETS, "grace_hopper.jpg"), "rb") as f:
        return f.read()


def png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 32


def generic(method_label: str, string_field: Optional[int] = 1) -> list:
    cases = [Case("malformed protobuf", MALFORMED, C.INVALID_ARGUMENT, "could not be parsed"),
             Case("truncated message", TRUNCATED, C.INVALID_ARGUMENT, "could not be parsed")]
    if string_field:
        cases += [Case("invalid UTF-8 in a string", field_bytes(string_field, BAD_UTF8), C.INVALID_ARGUMENT, "UTF-8"),
                  Case("wrong wire type (varint for a string)", field_varint(string_field, 7), AS_EMPTY)]
    return cases


def _image_specific() -> list:
    return [
        Case("empty request", b"", C.INVALID_ARGUMENT, "no image bytes"),
        Case("garbage jpeg", ser(ML.ImageRequest(image_data=b"\xff\xd8\xff" + b"\x00" * 40, format="jpeg")),
             C.INVALID_ARGUMENT, "could not be decoded"),
        Case("raw with the wrong size", ser(ML.ImageRequest(image_data=b"x" * 100, format="raw", width=640, height=480)),
             C.INVALID_ARGUMENT, "expected 921600 bytes"),
        Case("negative width", ser(ML.ImageRequest(image_data=b"x" * 12, format="raw", width=-2, height=2)),
             C.INVALID_ARGUMENT, "width"),
        Case("absurd size", ser(ML.ImageRequest(image_data=b"x" * 12, format="raw", width=2**30, height=2**30)),
             C.INVALID_ARGUMENT, ""),
        Case("png header claiming 100000x100000", ser(ML.ImageRequest(image_data=png_claiming(100000, 100000),
                                                                      format="png")), C.INVALID_ARGUMENT, "100000"),
        Case("unknown format", ser(ML.ImageRequest(image_data=b"GIF89a" + b"\x00" * 20, format="gif")),
             C.INVALID_ARGUMENT, "unknown format"),
        Case("h264 frame", ser(ML.ImageRequest(image_data=b"\x00\x00\x00\x01" * 10, format="h264")),
             C.INVALID_ARGUMENT, "send compressed video in a stream"),
        Case("oversized message", ser(ML.ImageRequest(image_data=b"x" * ((MAX_MESSAGE_MB + 1) * 2**20), format="jpeg")),
             C.RESOURCE_EXHAUSTED, "larger than max"),
        Case("good image still works", ser(ML.ImageRequest(image_data=jpeg_bytes(), format="jpeg")), OK),
    ]


def frame(**kw) -> bytes:
    return ser(ML.VideoFrame(**kw))


def video_cases(method: str) -> list:
    unimpl = method in ("StreamHairSegmentation", "StreamObjectDetection", "StreamObjectDetection3D")
    good = [frame(frame_data=b"\x80" * (64 * 48 * 3), format="rgb", width=64, height=48, frame_number=1)]
    cases = [Case(c.name, [c.request], c.code, c.needle) for c in generic("frame", string_field=2)]
    cases.append(Case("no frame at all (client half-closes at once)", [], OK))
    if unimpl:
        return cases + [Case("any frame", good, C.UNIMPLEMENTED, "not")]
    return cases + [
        Case("empty frame", [frame()], C.INVALID_ARGUMENT, "no image bytes"),
        Case("wrong byte count", [frame(frame_data=b"x" * 100, format="rgb", width=640, height=480, frame_number=12)],
             C.INVALID_ARGUMENT, "frame 12"),
        Case("negative height", [frame(frame_data=b"x" * 12, format="rgb", width=2, height=-2)], C.INVALID_ARGUMENT, ""),
        Case("vp8 inter frame first", [frame(frame_data=b"\x9d\x01\x2a" * 10, format="vp8", width=64, height=48)],
             C.INVALID_ARGUMENT, "not a keyframe"),
        Case("h264 garbage", [frame(frame_data=b"\x00\x00\x00\x01\x41" + bytes(range(256)), format="h264",
                                    frame_number=3)], C.INVALID_ARGUMENT, "frame 3 (h264, 261 bytes)"),
        Case("bad max_pending metadata is ignored", [frame(frame_data=b"\x80" * (64 * 48 * 3), format="rgb", width=64,
                                                           height=48, metadata={"max_pending": "lots"})], OK),
        Case("good frame then garbage frame",
             good + [frame(frame_data=b"\xff\xd8\xff\x00", format="jpeg", frame_number=2)],
             C.INVALID_ARGUMENT, "frame 2"),
        Case("good frame then malformed message", good + [MALFORMED], C.INVALID_ARGUMENT, "could not be parsed"),
    ]


TEMPLATE = bytes(range(256)) + bytes(range(44))   # 10x10 rgb, not a uniform colour


def template_cases() -> list:
    rgb = b"\x80" * (64 * 48 * 3)
    T = ML.TemplateMatchingRequest
    return [Case(c.name, [c.request], c.code, c.needle) for c in generic("tm", string_field=None)] + [
        Case("invalid UTF-8 in frame_format", [field_bytes(1, rgb) + field_varint(3, 64) + field_varint(4, 48)
                                               + field_bytes(100, BAD_UTF8)], C.INVALID_ARGUMENT, "UTF-8"),
        Case("no frame", [ser(T())], C.INVALID_ARGUMENT, ""),
        Case("template larger than the frame", [ser(T(frame_data=rgb, frame_width=64, frame_height=48,
                                                      template_data=b"\x80" * (128 * 128 * 3), template_width=128,
                                                      template_height=128, threshold=0.9))], C.INVALID_ARGUMENT, "template"),
        Case("NaN threshold", [ser(T(frame_data=rgb, frame_width=64, frame_height=48, template_data=TEMPLATE,
                                     template_width=10, template_height=10, threshold=float("nan")))],
             C.INVALID_ARGUMENT, "threshold"),
        Case("threshold 5", [ser(T(frame_data=rgb, frame_width=64, frame_height=48, template_data=TEMPLATE,
                                   template_width=10, template_height=10, threshold=5))], C.INVALID_ARGUMENT, "threshold"),
        Case("inf max_overlap", [ser(T(frame_data=rgb, frame_width=64, frame_height=48, template_data=TEMPLATE,
                                       template_width=10, template_height=10, max_overlap=float("inf")))],
             C.INVALID_ARGUMENT, "max_overlap"),
        Case("no frame at all", [], OK),
    ]


def sequence_cases() -> list:
    F = ML.MediaSequenceFrame
    return [Case(c.name, [c.request], c.code, c.needle) for c in generic("seq", string_field=None)] + [
        Case("invalid UTF-8 in format", [field_bytes(1, jpeg_bytes()) + field_bytes(100, BAD_UTF8)],
             C.INVALID_ARGUMENT, "UTF-8"),
        Case("empty sequence", [], OK),
        Case("garbage frame", [ser(F(frame_data=b"not an image", frame_number=3))], C.INVALID_ARGUMENT, "frame 3"),
        Case("NaN feature", [ser(F(frame_data=jpeg_bytes(), frame_number=0, features={"x": float("nan")}))], OK),
    ]


def text_cases() -> list:
    T = ML.TextRequest
    return generic("text", string_field=1) + [
        Case("empty prompt", ser(T(prompt="", model="SmolLM2-135M-Instruct")), C.INVALID_ARGUMENT, "empty"),
        Case("unknown model", ser(T(prompt="hi", model="no-such-model-xyz")), C.NOT_FOUND, "no-such-model-xyz"),
        Case("path traversal model", ser(T(prompt="hi", model="../../../../etc")), C.NOT_FOUND, ""),
        Case("invalid UTF-8 in model", field_bytes(1, b"hi") + field_bytes(2, BAD_UTF8), C.INVALID_ARGUMENT, "UTF-8"),
        Case("negative max_length", ser(T(prompt="hi", model="SmolLM2-135M-Instruct", max_length=-3)),
             C.INVALID_ARGUMENT, "max_length"),
        Case("absurd max_length", ser(T(prompt="hi", model="SmolLM2-135M-Instruct", max_length=2**31 - 1)),
             C.INVALID_ARGUMENT, "max_length"),
        Case("NaN temperature", ser(T(prompt="hi", model="SmolLM2-135M-Instruct", temperature=float("nan"))),
             C.INVALID_ARGUMENT, "temperature"),
        Case("inf temperature", ser(T(prompt="hi", model="SmolLM2-135M-Instruct", temperature=float("inf"))),
             C.INVALID_ARGUMENT, "temperature"),
        Case("top_p 7", ser(T(prompt="hi", model="SmolLM2-135M-Instruct", top_p=7)), C.INVALID_ARGUMENT, "top_p"),
        Case("prompt above the character limit", ser(T(prompt="x" * 300_000, model="SmolLM2-135M-Instruct")),
             C.INVALID_ARGUMENT, "limit"),
        Case("oversized message", ser(T(prompt="x" * ((MAX_MESSAGE_MB + 1) * 2**20))), C.RESOURCE_EXHAUSTED, "larger than max"),
        Case("short generation still works", ser(T(prompt="Hi", model="SmolLM2-135M-Instruct", max_length=2)), OK),
    ]


def chat_cases() -> list:
    Ch, M = ML.ChatRequest, ML.ChatMessage
    return generic("chat", string_field=None) + [
        Case("no messages", ser(Ch(model="SmolLM2-135M-Instruct")), C.INVALID_ARGUMENT, "messages is empty"),
        Case("unknown role", ser(Ch(model="SmolLM2-135M-Instruct", messages=[M(role="hacker", content="hi")])),
             C.INVALID_ARGUMENT, "role"),
        Case("all messages empty", ser(Ch(model="SmolLM2-135M-Instruct", messages=[M(role="user", content="")])),
             C.INVALID_ARGUMENT, "empty"),
        Case("invalid UTF-8 in content", field_bytes(1, field_bytes(1, b"user") + field_bytes(2, BAD_UTF8)),
             C.INVALID_ARGUMENT, "UTF-8"),
        Case("unknown model", ser(Ch(model="no-such-chat-model", messages=[M(role="user", content="hi")])),
             C.NOT_FOUND, "no-such-chat-model"),
        Case("NaN temperature", ser(Ch(model="SmolLM2-135M-Instruct", temperature=float("nan"),
                                       messages=[M(role="user", content="hi")])), C.INVALID_ARGUMENT, "temperature"),
        Case("messages above the character limit", ser(Ch(model="SmolLM2-135M-Instruct",
                                                           messages=[M(role="user", content="y" * 600_000)])),
             C.INVALID_ARGUMENT, "limit"),
    ]


def embedding_cases() -> list:
    E = ML.GenerateEmbeddingsRequest
    return generic("emb", string_field=1) + [
        Case("no texts", ser(E(model="all-MiniLM-L6-v2")), C.INVALID_ARGUMENT, "texts is empty"),
        Case("too many texts", ser(E(texts=["a"] * 3000, model="all-MiniLM-L6-v2")), C.INVALID_ARGUMENT, "limit"),
        Case("unknown model", ser(E(texts=["a"], model="no-such-embedder")), C.NOT_FOUND, "no-such-embedder"),
        Case("path traversal model", ser(E(texts=["a"], model="../../etc/passwd")), C.NOT_FOUND, ""),
        Case("NUL in model id", ser(E(texts=["a"], model="mini\x00lm")), C.INVALID_ARGUMENT, "NUL"),
        Case("text above the character limit", ser(E(texts=["z" * 300_000], model="all-MiniLM-L6-v2")),
             C.INVALID_ARGUMENT, "limit"),
        Case("empty text still embeds", ser(E(texts=[""], model="all-MiniLM-L6-v2")), OK),
    ]


def load_cases() -> list:
    L = ML.LoadModelRequest
    return generic("load", string_field=1) + [
        Case("empty model_id", ser(L()), C.INVALID_ARGUMENT, "model_id is empty"),
        Case("unknown hf model", ser(L(model_id="no-such-model", pipeline_type="text-generation")), C.NOT_FOUND, "no-such-model"),
        Case("path traversal", ser(L(model_id="../../../../etc", pipeline_type="text-generation")), C.NOT_FOUND, ""),
        Case("unknown tflite model", ser(L(model_id="nope.tflite", pipeline_type="tflite")), C.NOT_FOUND, "nope"),
        Case("tflite path traversal", ser(L(model_id="evil", pipeline_type="tflite", options={"path": "../../../etc/passwd"})),
             C.INVALID_ARGUMENT, "'..' segment"),
        Case("tflite id traversal", ser(L(model_id="../../../etc/passwd", pipeline_type="tflite")),
             C.INVALID_ARGUMENT, "'..' segment"),
        Case("unknown pipeline type", ser(L(model_id="all-MiniLM-L6-v2", pipeline_type="teleportation")),
             C.UNIMPLEMENTED, "teleportation"),
        Case("bad dtype", ser(L(model_id="all-MiniLM-L6-v2", pipeline_type="feature-extraction", options={"dtype": "int3"})),
             C.INVALID_ARGUMENT, "dtype"),
        Case("device without a worker", ser(L(model_id="all-MiniLM-L6-v2", options={"device": "cuda:7"})),
             C.INVALID_ARGUMENT, "cuda:7"),
        Case("invalid UTF-8 in an option", field_bytes(1, b"m") + field_bytes(4, field_bytes(1, b"dtype") + field_bytes(2, BAD_UTF8)),
             C.INVALID_ARGUMENT, "UTF-8"),
    ]


def unload_cases() -> list:
    return generic("unload", string_field=1) + [
        Case("empty model_id", b"", C.INVALID_ARGUMENT, "model_id is empty"),
        Case("not loaded", ser(ML.UnloadModelRequest(model_id="never-loaded")), C.NOT_FOUND, "not loaded"),
        Case("path traversal", ser(ML.UnloadModelRequest(model_id="../../etc")), C.NOT_FOUND, "not loaded"),
    ]


def file_cases() -> list:
    F = ML.ModelFileRequest
    return generic("file", string_field=1) + [
        Case("empty request", b"", C.INVALID_ARGUMENT, ""),
        Case("path traversal", ser(F(model_id="all-MiniLM-L6-v2", file_path="../../../../etc/passwd")), C.INVALID_ARGUMENT, ""),
        Case("absolute path", ser(F(model_id="all-MiniLM-L6-v2", file_path="/etc/passwd")), C.INVALID_ARGUMENT, ""),
        Case("model id traversal", ser(F(model_id="../../..", file_path="etc/passwd")), C.NOT_FOUND, "not available"),
        Case("unknown model", ser(F(model_id="no-such-model", file_path="config.json")), C.NOT_FOUND, "no-such-model"),
    ]


def infer(name="face_detection_short_range", dtype="FP32", shape=(1, 128, 128, 3), raw: Optional[bytes] = None,
          input_name="input", outputs=()) -> bytes:
    req = K.ModelInferRequest(model_name=name)
    req.inputs.add(name=input_name, datatype=dtype, shape=list(shape))
    for o in outputs:
        req.outputs.add(name=o)
    req.raw_input_contents.append(np.zeros(shape, np.float32).tobytes() if raw is None else raw)
    return ser(req)


def kserve_infer_cases() -> list:
    nan = np.full((1, 128, 128, 3), np.nan, np.float32).tobytes()
    return generic("infer", string_field=1) + [
        Case("empty model name", b"", C.INVALID_ARGUMENT, "model name is empty"),
        Case("unknown model", infer(name="no_such_model_xyz"), C.NOT_FOUND, "no_such_model_xyz"),
        Case("path traversal model", infer(name="../../../etc/passwd"), C.INVALID_ARGUMENT, "'..' segment"),
        Case("wrong input name", infer(input_name="image"), C.INVALID_ARGUMENT, "no input 'image'"),
        Case("wrong datatype", infer(dtype="FP64"), C.INVALID_ARGUMENT, "FP64"),
        Case("unknown datatype", infer(dtype="FP128"), C.INVALID_ARGUMENT, "FP128"),
        Case("wrong shape", infer(shape=(1, 64, 128, 3)), C.INVALID_ARGUMENT, "shape"),
        Case("negative shape", infer(shape=(1, -128, 128, 3), raw=b"\x00" * 16), C.INVALID_ARGUMENT, ""),
        Case("absurd shape", infer(shape=(2**40, 2**20, 128, 3), raw=b"\x00" * 16), C.INVALID_ARGUMENT, ""),
        Case("wrong byte count", infer(raw=b"\x00" * 1000), C.INVALID_ARGUMENT, "got 1000 bytes"),
        Case("unknown output", infer(outputs=("scores",)), C.INVALID_ARGUMENT, "no output 'scores'"),
        Case("NaN input runs (NaN out)", infer(raw=nan), OK),
        Case("oversized message", infer(raw=b"\x00" * ((MAX_MESSAGE_MB + 1) * 2**20)), C.RESOURCE_EXHAUSTED, "larger than max"),
    ]


def repo_load_cases() -> list:
    R = K.RepositoryModelLoadRequest
    up = R(model_name="garbage_upload")
    up.parameters["file:model.tflite"].bytes_param = b"this is not a flatbuffer" * 10
    trav = R(model_name="trav")
    trav.parameters["path"].string_param = "../../../../etc/passwd"
    wrong = R(model_name="wrong_bytes")
    wrong.parameters["alias"].bytes_param = b"x"
    return generic("repo-load", string_field=2) + [
        Case("empty model name", b"", C.INVALID_ARGUMENT, "model_name is empty"),
        Case("unknown model", ser(R(model_name="no_such_tflite")), C.NOT_FOUND, "no_such_tflite"),
        Case("path traversal", ser(trav), C.INVALID_ARGUMENT, "'..' segment"),
        Case("garbage .tflite upload", ser(up), C.INVALID_ARGUMENT, ""),
        Case("bytes for a string parameter", ser(wrong), C.INVALID_ARGUMENT, "bytes are only accepted"),
    ]


def echo_cases() -> list:
    E = X.EchoRequest
    return generic("echo", string_field=1) + [
        Case("empty pool", b"", C.INVALID_ARGUMENT, "pool is empty"),
        Case("unknown pool", ser(E(pool="nosuch")), C.UNIMPLEMENTED, "nosuch"),
        Case("device without a worker", ser(E(pool="vision", device="cuda:9")), C.INVALID_ARGUMENT, "cuda:9"),
        Case("unknown action", ser(E(pool="hf", action="explode")), C.INVALID_ARGUMENT, "unknown action"),
        Case("fault action without PML_FAULT_INJECTION", ser(E(pool="litert", action="grow", grow_mb=100000)),
             C.INVALID_ARGUMENT, "PML_FAULT_INJECTION"),
        Case("oversized payload", ser(E(pool="litert", payload=b"x" * ((MAX_MESSAGE_MB + 1) * 2**20))),
             C.RESOURCE_EXHAUSTED, "larger than max"),
        Case("plain echo still works", ser(E(pool="litert", payload=b"ok")), OK),
    ]


def ok_with_garbage() -> list:
    """Request messages without fields: unknown fields are skipped (proto3), the call answers normally."""
    return [Case("empty request", b"", OK), Case("unknown fields", field_varint(99, 1) + field_bytes(98, b"zz"), OK),
            Case("malformed protobuf", MALFORMED, C.INVALID_ARGUMENT, "could not be parsed")]


MP, TF, MM, KS = "ml.MediapipeService", "ml.TransformersService", "ml.ModelManagementService", "inference.GRPCInferenceService"
VIDEO_METHODS = ["StreamFaceDetection", "StreamHandTracking", "StreamPoseTracking", "StreamHolisticTracking",
                 "StreamFaceMesh", "StreamIrisTracking", "StreamObjectDetection", "StreamObjectTracking",
                 "StreamObjectDetection3D", "StreamSelfieSegmentation", "StreamHairSegmentation", "StreamAutoFlip"]

TABLE: list = [
    *[(f"{MP}/{m}", U, "vision", _image_specific() + generic("image", string_field=2)) for m in ("DetectFaces", "DetectHands", "DetectPose")],
    *[(f"{MP}/{m}", B, "vision", video_cases(m)) for m in VIDEO_METHODS],
    (f"{MP}/StreamTemplateMatching", B, "vision", template_cases()),
    (f"{MP}/ProcessMediaSequence", CS, "vision", sequence_cases()),
    (f"{TF}/GenerateText", S, "hf", text_cases()),
    (f"{TF}/ChatCompletion", S, "hf", chat_cases()),
    (f"{TF}/GenerateEmbeddings", U, "hf", embedding_cases()),
    (f"{MM}/LoadModel", U, "hf", load_cases()),
    (f"{MM}/UnloadModel", U, "hf", unload_cases()),
    (f"{MM}/GetLoadedModels", U, "", ok_with_garbage()),
    (f"{MM}/GetModelFile", S, "hf", file_cases()),
    (f"{KS}/ServerLive", U, "", ok_with_garbage()),
    (f"{KS}/ServerReady", U, "", ok_with_garbage()),
    (f"{KS}/ServerMetadata", U, "", ok_with_garbage()),
    (f"{KS}/ModelReady", U, "litert", generic("ready", 1) + [
        Case("empty name", b"", C.INVALID_ARGUMENT, "model name is empty"),
        Case("unknown model answers ready=false", ser(K.ModelReadyRequest(name="nope")), OK)]),
    (f"{KS}/ModelMetadata", U, "litert", generic("meta", 1) + [
        Case("empty name", b"", C.INVALID_ARGUMENT, "model name is empty"),
        Case("unknown model", ser(K.ModelMetadataRequest(name="no_such_model_xyz")), C.NOT_FOUND, "no_such_model_xyz"),
        Case("path traversal", ser(K.ModelMetadataRequest(name="../../etc/passwd")), C.INVALID_ARGUMENT, "'..' segment"),
        Case("absolute path outside the model folders", ser(K.ModelMetadataRequest(name="/etc/hostname")),
             C.PERMISSION_DENIED, "not inside the model folders")]),
    (f"{KS}/ModelInfer", U, "litert", kserve_infer_cases()),
    (f"{KS}/RepositoryIndex", U, "", ok_with_garbage()),
    (f"{KS}/RepositoryModelLoad", U, "litert", repo_load_cases()),
    (f"{KS}/RepositoryModelUnload", U, "litert", generic("repo-unload", 2) + [
        Case("empty name", b"", C.INVALID_ARGUMENT, "model_name is empty"),
        Case("not loaded", ser(K.RepositoryModelUnloadRequest(model_name="never_loaded")), C.NOT_FOUND, "not loaded")]),
    ("pythonml.v1.Stats/GetStats", U, "", ok_with_garbage()),
    ("pythonml.v1.Diagnostics/Echo", S, "", echo_cases()),
]


def _extension_rows() -> list:
    """Generic rows for pythonml.v1 services added later (speech, pipelines)."""
    covered = {path for path, *_ in TABLE}
    rows = []
    for svc in X.DESCRIPTOR.services_by_name.values():
        for m in svc.methods:
            path = f"{svc.full_name}/{m.name}"
            if path in covered:
                continue
            shape = {(False, False): U, (False, True): S, (True, False): CS, (True, True): B}[
                (m.client_streaming, m.server_streaming)]
            strings = [f.number for f in m.input_type.fields if f.type == f.TYPE_STRING]
            cases = generic(path, strings[0] if strings else None)
            if shape in (CS, B):
                cases = [Case(c.name, [c.request], c.code, c.needle) for c in cases]
            rows.append((path, shape, "", cases))
    return rows


TABLE += _extension_rows()


@pytest.fixture(scope="module")
def svc():
    s = start_service(["--pools", "vision,hf,litert", "--cuda", "off", "--worker-threads", "1",
                       "--max-message-mb", str(MAX_MESSAGE_MB), "--max-frame-mb", "3"], wait_service="", timeout=300)
    yield s
    s.stop()


def invoke(ch, path: str, shape: str, request, timeout: float):
    p = "/" + path
    if shape == U:
        return ch.unary_unary(p)(request, timeout=timeout)
    if shape == S:
        return list(ch.unary_stream(p)(request, timeout=timeout))
    if shape == CS:
        return ch.stream_unary(p)(iter(request), timeout=timeout)
    return list(ch.stream_stream(p)(iter(request), timeout=timeout))


def is_not_served(exc: grpc.RpcError) -> bool:
    return exc.code() == C.UNIMPLEMENTED and "Method not found" in (exc.details() or "")


def assert_healthy(ch, pool: str) -> None:
    st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert st.status == health_pb2.HealthCheckResponse.SERVING
    if pool:
        (r,) = list(XG.DiagnosticsStub(ch).Echo(X.EchoRequest(pool=pool, payload=b"alive"), timeout=30))
        assert r.payload == b"alive"


CASES_TRIED = {"n": 0, "rows": 0}


@pytest.mark.parametrize("path,shape,pool,cases", TABLE, ids=[row[0] for row in TABLE])
def test_row(svc, path, shape, pool, cases):
    ch = svc.channel()
    failures = []
    empty_answer = "unset"
    for case in cases:
        CASES_TRIED["n"] += 1
        if case.code == AS_EMPTY:
            if empty_answer == "unset":
                try:
                    invoke(ch, path, shape, [b""] if shape in (CS, B) else b"", case.timeout)
                    empty_answer = (None, "")
                except grpc.RpcError as exc:
                    empty_answer = (exc.code(), exc.details() or "")
            case = Case(case.name, case.request, empty_answer[0], empty_answer[1][:40], case.timeout)
        try:
            invoke(ch, path, shape, case.request, case.timeout)
            got, details = None, ""
        except grpc.RpcError as exc:
            if is_not_served(exc) and path.startswith("pythonml.v1.") and path.split("/")[0] not in (
                    "pythonml.v1.Stats", "pythonml.v1.Diagnostics"):
                pytest.skip(f"{path} is in the proto but not served yet")
            got, details = exc.code(), exc.details() or ""
        ok = got == case.code and (case.code is None or case.needle.lower() in details.lower())
        if case.code is not None and ok:
            ok = len(details) >= 15  # a message a person can act on, not a bare code
        if not ok:
            failures.append(f"{case.name}: expected {case.code} ~{case.needle!r}, got {got} {details[:300]!r}")
    CASES_TRIED["rows"] += 1
    print(f"{path}: {len(cases)} hostile inputs, {len(cases) - len(failures)} answered as documented "
          f"(cases tried so far: {CASES_TRIED['n']})")
    assert_healthy(ch, pool)
    assert not failures, "\n".join(failures)


def test_thousand_idle_streams_do_not_hurt(svc):
    """A client opens 1,000 bidi streams and never sends: the service keeps answering everyone else."""
    ch = svc.channel()
    other = svc.channel()
    stop = threading.Event()

    def never():
        stop.wait(120)
        return
        yield  # pragma: no cover
    calls = [ch.stream_stream(f"/{MP}/StreamFaceDetection")(never(), timeout=120) for _ in range(1000)]
    CASES_TRIED["n"] += 1
    try:
        time.sleep(1.0)
        t0 = time.time()
        assert_healthy(other, "vision")
        r = other.unary_unary(f"/{MP}/DetectFaces")(ser(ML.ImageRequest(image_data=jpeg_bytes(), format="jpeg")), timeout=30)
        assert len(ML.FaceDetectionResponse.FromString(r).faces) == 1
        (e,) = list(XG.DiagnosticsStub(other).Echo(X.EchoRequest(pool="hf", payload=b"x"), timeout=30))
        st = XG.StatsStub(other).GetStats(X.StatsRequest(), timeout=10)
        assert all(w.state == "ready" for w in st.workers)
        print(f"1000 idle streams open: other clients answered in {time.time() - t0:.2f}s")
    finally:
        stop.set()
        for c in calls:
            c.cancel()
    time.sleep(0.5)
    st = XG.StatsStub(other).GetStats(X.StatsRequest(), timeout=10)
    assert st.shm_slots_free == st.shm_slots_total
    assert_healthy(other, "vision")


def test_zz_count_of_cases_tried():
    expected = sum(len(cases) for *_, cases in TABLE) + 1
    print(f"bad-input suite: {CASES_TRIED['n']} hostile inputs tried over {len(TABLE)} RPC rows "
          f"(+1,000 idle streams); table holds {expected}")
    if CASES_TRIED["rows"] == len(TABLE):
        assert CASES_TRIED["n"] == expected
