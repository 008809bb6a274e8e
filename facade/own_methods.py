"""Methods the facade answers itself or routes by their content: model management, stats, echo.

There is one model registry: the broker's view of what every worker reports as loaded, whichever API
(ml.ModelManagementService or the KServe repository extension) loaded it.
"""
from __future__ import annotations

import logging

import grpc

from facade.broker_client import BrokerClient
from facade.errors import BrokerError
from facade.passthrough import _identity, timeout_of
from common.placement import pool_for_load
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X

log = logging.getLogger("facade")

LOAD = "ml.ModelManagementService/LoadModel"
UNLOAD = "ml.ModelManagementService/UnloadModel"


async def find_model(client: BrokerClient, model_id: str):
    models = (await client.query("models"))["models"]
    return [m for m in models if m.get("model_id") == model_id]


class ModelManagement:
    def __init__(self, client: BrokerClient, configured_pools: set, model_files=None):
        self.client = client
        self.pools = configured_pools
        self.model_files = model_files  # async generator fn(request, context) or None

    async def load_model(self, request: ML.LoadModelRequest, context):
        if not request.model_id.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "LoadModel: model_id is empty")
        pool = pool_for_load(request.pipeline_type, request.model_id, request.options)
        if pool not in self.pools:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"LoadModel: pipeline '{request.pipeline_type}' needs the {pool} pool, which is not running")
        device = request.options.get("device", "")
        try:
            return await self.client.unary(LOAD, pool, request.SerializeToString(), model=request.model_id,
                                           device=device, timeout=timeout_of(context))
        except BrokerError as exc:
            await context.abort(exc.status, exc.message)

    async def unload_model(self, request: ML.UnloadModelRequest, context):
        if not request.model_id.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "UnloadModel: model_id is empty")
        where = await find_model(self.client, request.model_id)
        if not where:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"UnloadModel: model '{request.model_id}' is not loaded (see GetLoadedModels)")
        last = b""
        try:
            for m in where:
                last = await self.client.unary(UNLOAD, m["pool"], request.SerializeToString(),
                                               model=request.model_id, device=m["device"],
                                               timeout=timeout_of(context))
        except BrokerError as exc:
            await context.abort(exc.status, exc.message)
        return last

    async def get_loaded_models(self, request, context):
        models = (await self.client.query("models"))["models"]
        out = ML.LoadedModelsResponse()
        for m in models:
            out.models.add(model_id=str(m.get("model_id", "")), pipeline_type=str(m.get("pipeline_type", "")),
                           vram_mb=int(round(m.get("vram_mb") or 0)), ram_mb=int(round(m.get("ram_mb") or 0)),
                           loaded_at=int(m.get("loaded_at") or 0))
        return out.SerializeToString()

    async def get_model_file(self, request: ML.ModelFileRequest, context):
        if self.model_files is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetModelFile: this build serves no model files")
        async for chunk in self.model_files(request, context):
            yield chunk.SerializeToString() if hasattr(chunk, "SerializeToString") else chunk

    def handlers(self):
        return grpc.method_handlers_generic_handler("ml.ModelManagementService", {
            "LoadModel": grpc.unary_unary_rpc_method_handler(self.load_model, ML.LoadModelRequest.FromString, _identity),
            "UnloadModel": grpc.unary_unary_rpc_method_handler(self.unload_model, ML.UnloadModelRequest.FromString, _identity),
            "GetLoadedModels": grpc.unary_unary_rpc_method_handler(self.get_loaded_models, ML.EmptyRequest.FromString, _identity),
            "GetModelFile": grpc.unary_stream_rpc_method_handler(self.get_model_file, ML.ModelFileRequest.FromString, _identity),
        })


def stats_message(stats: dict) -> X.StatsResponse:
    out = X.StatsResponse(uptime_s=float(stats.get("uptime_s", 0)), malformed_frames=int(stats.get("malformed_frames", 0)))
    for w in stats.get("workers", []):
        ws = out.workers.add(
            pid=int(w["pid"]), pool=w["pool"], device=w["device"], state=w["state"], rss_mb=w["rss_mb"],
            uss_mb=w["uss_mb"], pss_mb=w["pss_mb"], cuda_allocated_mb=w["cuda_allocated_mb"],
            cuda_reserved_mb=w["cuda_reserved_mb"], inflight=w["inflight"], queue_depth=w["queue_depth"],
            restarts=w["restarts"], uptime_s=w["uptime_s"], capacity=w["capacity"],
            requests_served=w["requests_served"], worker_id=w["worker_id"], cpus=str(w.get("cpus", "")),
            nice=int(w.get("nice", 0)), threads=int(w.get("threads", 0)), placement=str(w.get("placement", "")),
            node=str(w.get("node", "")), node_ip=str(w.get("node_ip", "")), sched=str(w.get("sched", "")))
        for m in w.get("models", []):
            ws.models.add(model_id=str(m.get("model_id", "")), pipeline_type=str(m.get("pipeline_type", "")),
                          ram_mb=float(m.get("ram_mb") or 0), vram_mb=float(m.get("vram_mb") or 0),
                          loaded_at=int(m.get("loaded_at") or 0))
    for p in stats.get("pools", []):
        out.pools.add(**p)
    return out


class Stats:
    def __init__(self, client: BrokerClient, passthrough=None):
        self.client = client
        self.passthrough = passthrough

    async def get_stats(self, request, context):
        stats = await self.client.query("stats")
        out = stats_message(stats)
        out.worker_crashes = int(stats.get("crashes", 0))
        out.worker_hangs = int(stats.get("hangs", 0))
        alloc = self.client.allocator
        if alloc is not None:
            out.shm_slots_total = alloc.slots
            out.shm_slots_free = alloc.free_count()
            out.shm_inline_fallbacks = alloc.fallbacks
        if self.passthrough is not None:
            out.dropped_stream_frames = self.passthrough.dropped_frames
        return out.SerializeToString()

    def handlers(self):
        return grpc.method_handlers_generic_handler("pythonml.v1.Stats", {
            "GetStats": grpc.unary_unary_rpc_method_handler(self.get_stats, X.StatsRequest.FromString, _identity)})


class Diagnostics:
    """Echo through any pool: a round-trip probe for people and the benchmark's no-op request."""

    def __init__(self, client: BrokerClient):
        self.client = client

    async def echo(self, request: X.EchoRequest, context):
        if not request.pool:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Echo: pool is empty (e.g. 'vision', 'hf', 'litert')")
        frame = None
        if request.action == "shm_echo":
            frame, request.payload = request.payload, b""
        try:
            async for part in self.client.stream("pythonml.v1.Diagnostics/Echo", request.pool, request.SerializeToString(),
                                                 model=request.model, device=request.device,
                                                 timeout=timeout_of(context), frame=frame):
                yield part
        except BrokerError as exc:
            await context.abort(exc.status, exc.message)

    def handlers(self):
        return grpc.method_handlers_generic_handler("pythonml.v1.Diagnostics", {
            "Echo": grpc.unary_stream_rpc_method_handler(self.echo, X.EchoRequest.FromString, _identity)})
