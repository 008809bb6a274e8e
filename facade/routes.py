"""Which pool serves each gRPC method, where its frame bytes and model name live, and its shape.

Adding a pass-through method is one entry here; its pool is the family that serves its gRPC service
(common/families.py). Methods that the facade answers itself (health,
stats, model listing, KServe server metadata, model files) live in facade/own_methods.py and facade/kserve.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from google.protobuf import message_factory

from common.families import pool_serving, service_pools
from common.methods import MEDIAPIPE as MP, PIPELINES as PL, SPEECH as SP, TRANSFORMERS as TF
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X

UNARY, SERVER_STREAM, CLIENT_STREAM, BIDI = "U", "S", "C", "B"


@dataclass(frozen=True)
class Route:
    service: str
    method: str
    frame_field: Optional[str] = None   # bytes field moved into shared memory
    model_field: Optional[str] = None   # field naming the model (affinity, auto-load)
    # bidi only: whether a client may choose the LIVE_STREAM running mode (drop the oldest waiting
    # frame); every stream runs in VIDEO mode (never drops, back-pressure) unless its client asks.
    # False (audio): LIVE_STREAM is refused with INVALID_ARGUMENT
    live_stream: bool = True
    # repeated message field whose elements' bytes fields `<f>` (with a sibling `<f>_ref` BlobRef)
    # are packed into one shared-memory blob; the worker slices it by the refs
    packed_field: Optional[str] = None
    # bidi only: a bool field meaning "last message". When the client half-closes without having sent a
    # message with it set, the facade sends one more (empty) message with it set and forwards the reply,
    # so a plain close still flushes what the worker buffered (e.g. the final transcript)
    close_field: Optional[str] = None

    @property
    def path(self) -> str:
        return f"{self.service}/{self.method}"

    @property
    def pool(self) -> str:
        return pool_serving(self.service)


def method_descriptor(service: str, method: str):
    for module in (ML, X):
        svc = module.DESCRIPTOR.services_by_name.get(service.split(".")[-1])
        if svc is not None and svc.full_name == service:
            return svc.methods_by_name[method]
    raise KeyError(f"{service}/{method}")


def shape_of(md) -> str:
    if md.client_streaming and md.server_streaming:
        return BIDI
    if md.client_streaming:
        return CLIENT_STREAM
    if md.server_streaming:
        return SERVER_STREAM
    return UNARY


def message_class(descriptor):
    return message_factory.GetMessageClass(descriptor)


ROUTES: list[Route] = [
    Route(MP, "DetectFaces", frame_field="image_data"),
    Route(MP, "DetectHands", frame_field="image_data"),
    Route(MP, "DetectPose", frame_field="image_data"),
    *[Route(MP, m, frame_field="frame_data") for m in (
        "StreamFaceDetection", "StreamHandTracking", "StreamPoseTracking", "StreamHolisticTracking",
        "StreamFaceMesh", "StreamIrisTracking", "StreamObjectDetection", "StreamObjectTracking",
        "StreamObjectDetection3D", "StreamSelfieSegmentation", "StreamHairSegmentation",
        "StreamTemplateMatching", "StreamAutoFlip", "ProcessMediaSequence")],
    Route(TF, "GenerateText", model_field="model"),
    Route(TF, "GenerateEmbeddings", model_field="model"),
    Route(TF, "ChatCompletion", model_field="model"),
    Route(SP, "Transcribe", frame_field="audio", model_field="model"),
    Route(SP, "StreamTranscribe", frame_field="pcm", model_field="model", live_stream=False,
          close_field="end"),
    Route(PL, "Run", model_field="model", packed_field="inputs"),
    Route(PL, "RunStream", model_field="model", packed_field="inputs"),
]

ROUTES_BY_PATH = {r.path: r for r in ROUTES}

# gRPC service -> pools whose liveness decides its health status
SERVICE_POOLS = service_pools()
