"""KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`) in the facade.

- ServerLive / ServerReady / ServerMetadata are answered here (ready = the litert pool has a live worker).
- ModelInfer / ModelMetadata / ModelReady go to the litert pool, routed by model name (affinity).
  ModelInfer is a pass-through (make_model_infer_handler, registered ahead of the servicer): big
  raw_input_contents travel beside the request through the payload codec (common/payload.py, pieces).
- The repository extension uses the broker's single model registry: RepositoryIndex lists what the
  litert pool has loaded (whichever API loaded it: this one or ml.ModelManagementService) plus the
  built-in aliases that a load would find; RepositoryModelLoad / Unload become ml LoadModel /
  UnloadModel requests on the litert pool. Load parameters: string/bool/int parameters become LoadModel
  options (path, alias, file_path, threads, xnnpack, gpu_delegate, model_file_service); a Triton-style
  ``file:<name>`` bytes parameter uploads the .tflite itself.
BrokerError(code, message) becomes the same gRPC status with the same message.
"""
from __future__ import annotations

import logging

import grpc

from common import families, litert_catalogue, methods
from common import payload as codec
from facade.errors import BrokerError
from facade.passthrough import _identity, timeout_of
from protos import ml_inference_pb2 as ML
from protos.kserve import grpc_service_pb2 as K
from protos.kserve import grpc_service_pb2_grpc as KG

log = logging.getLogger("facade.kserve")

POOL = families.pool_serving(methods.KSERVE)
SERVER_NAME = "pythonml"
SERVER_VERSION = "1.0.0"
EXTENSIONS = ["model_repository", "parameters"]
# raw input tensors at least this big travel through the shared-memory frame pool (one copy in the
# facade, zero-copy view in the worker) instead of inside the ZeroMQ message through the broker
SHM_MIN_BYTES = 16 * 1024


def _repository_param(p) -> tuple:
    which = p.WhichOneof("parameter_choice")
    value = getattr(p, which) if which else None
    if which == "bool_param":
        return "true" if value else "false", None
    if which == "bytes_param":
        return None, value
    return ("" if value is None else str(value)), None


def load_request(request: K.RepositoryModelLoadRequest) -> tuple:
    """(LoadModelRequest, uploaded model bytes or None) for a RepositoryModelLoad."""
    options, upload = {}, None
    for key, param in request.parameters.items():
        text, blob = _repository_param(param)
        if key.startswith("file:"):
            if blob is None:
                raise ValueError(f"parameter '{key}' must carry the file's bytes (bytes_param)")
            if not key.endswith(".tflite"):
                continue  # Triton clients may also send config files; a LiteRT model is one .tflite
            if upload is not None:
                raise ValueError("more than one file:*.tflite parameter; send exactly one model file")
            upload = blob
        elif blob is not None:
            raise ValueError(f"parameter '{key}': bytes are only accepted for file:<name>.tflite")
        else:
            options[key] = text
    if upload is not None:
        options["content"] = "frame"
    return ML.LoadModelRequest(model_id=request.model_name, pipeline_type="tflite", options=options), upload


def make_kserve_servicer(client):
    """A grpc.aio GRPCInferenceServiceServicer backed by the broker `client` (facade.broker_client)."""

    class KServeServicer(KG.GRPCInferenceServiceServicer):
        async def _abort(self, context, exc: BrokerError):
            await context.abort(exc.status, exc.message)

        async def _litert_live(self) -> bool:
            stats = await client.query("stats")
            return any(p.get("pool") == POOL and int(p.get("live_workers") or 0) > 0 for p in stats.get("pools", []))

        async def ServerLive(self, request, context):
            return K.ServerLiveResponse(live=True)

        async def ServerReady(self, request, context):
            try:
                return K.ServerReadyResponse(ready=await self._litert_live())
            except BrokerError as exc:
                log.warning("ServerReady: broker query failed: %s", exc)
                return K.ServerReadyResponse(ready=False)

        async def ServerMetadata(self, request, context):
            return K.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

        async def _forward(self, method: str, request, model: str, context, response_cls):
            if not model:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{methods.method_name(method)}: the model name is empty")
            try:
                raw = await client.unary(method, POOL, request.SerializeToString(), model=model,
                                         timeout=timeout_of(context))
            except BrokerError as exc:
                await self._abort(context, exc)
            return response_cls.FromString(raw)

        async def ModelReady(self, request, context):
            if not request.name:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ModelReady: the model name is empty")
            models = (await client.query("models")).get("models", [])
            if not any(m.get("model_id") == request.name and m.get("pool") == POOL for m in models):
                return K.ModelReadyResponse(ready=False)
            return await self._forward(methods.KSERVE_MODEL_READY, request, request.name, context, K.ModelReadyResponse)

        async def ModelMetadata(self, request, context):
            return await self._forward(methods.KSERVE_MODEL_METADATA, request, request.name, context,
                                       K.ModelMetadataResponse)

        async def RepositoryIndex(self, request, context):
            try:
                models = (await client.query("models")).get("models", [])
            except BrokerError as exc:
                await self._abort(context, exc)
            out = K.RepositoryIndexResponse()
            seen = set()
            for m in models:
                if m.get("pool") != POOL or m.get("model_id") in seen:
                    continue
                seen.add(m["model_id"])
                out.models.add(name=m["model_id"], version="", state="READY", reason="")
            if not request.ready:
                for alias in litert_catalogue.short_names():
                    if alias not in seen:
                        out.models.add(name=alias, version="", state="UNAVAILABLE", reason="unloaded")
            return out

        async def RepositoryModelLoad(self, request, context):
            if not request.model_name:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "RepositoryModelLoad: model_name is empty")
            try:
                load, upload = load_request(request)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"RepositoryModelLoad: {exc}")
            try:
                raw = await client.unary(methods.LOAD_MODEL, POOL, load.SerializeToString(), model=request.model_name,
                                         timeout=timeout_of(context), frame=upload)
            except BrokerError as exc:
                await self._abort(context, exc)
            resp = ML.LoadModelResponse.FromString(raw)
            if not resp.success:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, resp.message or "load failed")
            log.info("RepositoryModelLoad %s: %s", request.model_name, resp.message)
            return K.RepositoryModelLoadResponse()

        async def RepositoryModelUnload(self, request, context):
            if not request.model_name:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "RepositoryModelUnload: model_name is empty")
            models = (await client.query("models")).get("models", [])
            where = [m for m in models if m.get("model_id") == request.model_name and m.get("pool") == POOL]
            if not where:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"RepositoryModelUnload: model '{request.model_name}' is not loaded "
                                    f"(see RepositoryIndex)")
            payload = ML.UnloadModelRequest(model_id=request.model_name).SerializeToString()
            try:
                for m in where:
                    await client.unary(methods.UNLOAD_MODEL, POOL, payload, model=request.model_name,
                                       device=m.get("device", ""), timeout=timeout_of(context))
            except BrokerError as exc:
                await self._abort(context, exc)
            return K.RepositoryModelUnloadResponse()

    return KServeServicer()


def make_model_infer_handler(client):
    """ModelInfer as a pass-through: the worker's serialized ModelInferResponse goes to the client
    untouched (identity serializer) instead of being parsed and re-serialized in the facade. Registered
    ahead of the servicer (the first handler registered for a method answers it), which keeps answering
    every other method."""

    async def model_infer(request, context):
        if not request.model_name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ModelInfer: the model name is empty")
        packed = codec.pack(request, pieces="raw_input_contents", min_bytes=SHM_MIN_BYTES)
        try:
            return await client.unary(methods.KSERVE_MODEL_INFER, POOL, packed.payload, model=request.model_name,
                                      timeout=timeout_of(context), frame=packed.side, extra=packed.header)
        except BrokerError as exc:
            await context.abort(exc.status, exc.message)

    return grpc.method_handlers_generic_handler(methods.KSERVE, {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer, K.ModelInferRequest.FromString, _identity)})
