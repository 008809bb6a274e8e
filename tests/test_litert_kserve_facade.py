"""facade/kserve.py against a fake broker client: what is answered locally, what is forwarded where,
how the repository extension maps onto ml LoadModel/UnloadModel, and BrokerError -> gRPC status."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from facade.errors import BrokerError
from facade.kserve import make_kserve_servicer, make_model_infer_handler
from protos import ml_inference_pb2 as ML
from protos.kserve import grpc_service_pb2 as K
from protos.kserve import grpc_service_pb2_grpc as KG


class FakeClient:
    def __init__(self):
        self.calls = []
        self.models = []
        self.live = 1
        self.fail = None

    async def query(self, what):
        if what == "stats":
            return {"pools": [{"pool": "litert", "device": "cpu", "live_workers": self.live},
                              {"pool": "vision", "device": "cpu", "live_workers": 1}]}
        return {"models": list(self.models)}

    async def unary(self, method, pool, payload, *, model="", device="", timeout=None, frame=None, extra=None):
        self.calls.append(dict(method=method, pool=pool, payload=payload, model=model, device=device, frame=frame,
                               extra=extra))
        if self.fail:
            raise self.fail
        if method.endswith("/ModelInfer"):
            req = K.ModelInferRequest.FromString(payload)
            return K.ModelInferResponse(model_name=req.model_name, id=req.id).SerializeToString()
        if method.endswith("/ModelReady"):
            return K.ModelReadyResponse(ready=True).SerializeToString()
        if method.endswith("/LoadModel"):
            return ML.LoadModelResponse(success=True, message="ok").SerializeToString()
        if method.endswith("/UnloadModel"):
            return ML.StatusResponse(success=True).SerializeToString()
        raise AssertionError(method)


def run_with_server(client, body):
    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((make_model_infer_handler(client),))  # as facade/server.py: first
        KG.add_GRPCInferenceServiceServicer_to_server(make_kserve_servicer(client), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                await body(KG.GRPCInferenceServiceStub(ch))
        finally:
            await server.stop(0)
    asyncio.run(main())


def test_server_calls_answered_in_the_facade():
    client = FakeClient()

    async def body(stub):
        assert (await stub.ServerLive(K.ServerLiveRequest())).live
        assert (await stub.ServerReady(K.ServerReadyRequest())).ready
        client.live = 0
        assert not (await stub.ServerReady(K.ServerReadyRequest())).ready
        md = await stub.ServerMetadata(K.ServerMetadataRequest())
        assert md.name == "pythonml" and "model_repository" in md.extensions
    run_with_server(client, body)
    assert client.calls == []


def test_model_calls_forwarded_to_the_litert_pool_with_affinity():
    client = FakeClient()

    async def body(stub):
        resp = await stub.ModelInfer(K.ModelInferRequest(model_name="m1", id="7"))
        assert resp.model_name == "m1" and resp.id == "7"
        assert not (await stub.ModelReady(K.ModelReadyRequest(name="m1"))).ready  # not in the registry
        client.models = [{"model_id": "m1", "pool": "litert", "device": "cpu"}]
        assert (await stub.ModelReady(K.ModelReadyRequest(name="m1"))).ready
    run_with_server(client, body)
    assert [(c["method"], c["pool"], c["model"]) for c in client.calls] == [
        ("inference.GRPCInferenceService/ModelInfer", "litert", "m1"),
        ("inference.GRPCInferenceService/ModelReady", "litert", "m1")]


def test_broker_errors_keep_code_and_message():
    client = FakeClient()
    client.fail = BrokerError("INVALID_ARGUMENT", "input 'x': expected FP32 [1,2] (8 bytes), got 4 bytes")

    async def body(stub):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.ModelInfer(K.ModelInferRequest(model_name="m1"))
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ei.value.details() == "input 'x': expected FP32 [1,2] (8 bytes), got 4 bytes"
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.ModelMetadata(K.ModelMetadataRequest(name=""))
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    run_with_server(client, body)


def test_repository_extension_maps_onto_model_management():
    client = FakeClient()
    client.models = [{"model_id": "face", "pool": "litert", "device": "cpu"},
                     {"model_id": "gpt", "pool": "hf", "device": "cpu"}]

    async def body(stub):
        idx = await stub.RepositoryIndex(K.RepositoryIndexRequest(ready=True))
        assert [(m.name, m.state) for m in idx.models] == [("face", "READY")]
        idx = await stub.RepositoryIndex(K.RepositoryIndexRequest())
        states = {m.name: m.state for m in idx.models}
        assert states["face"] == "READY" and states.get("palm_detection_lite") == "UNAVAILABLE"
        req = K.RepositoryModelLoadRequest(model_name="up")
        req.parameters["file:1/model.tflite"].bytes_param = b"0000TFL3"
        req.parameters["threads"].int64_param = 2
        req.parameters["xnnpack"].bool_param = False
        await stub.RepositoryModelLoad(req)
        await stub.RepositoryModelUnload(K.RepositoryModelUnloadRequest(model_name="face"))
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.RepositoryModelUnload(K.RepositoryModelUnloadRequest(model_name="nope"))
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    run_with_server(client, body)
    load, unload = client.calls
    assert load["method"] == "ml.ModelManagementService/LoadModel" and load["pool"] == "litert"
    lr = ML.LoadModelRequest.FromString(load["payload"])
    assert lr.model_id == "up" and lr.pipeline_type == "tflite"
    assert dict(lr.options) == {"content": "frame", "threads": "2", "xnnpack": "false"}
    assert load["frame"] == b"0000TFL3"
    assert unload["method"] == "ml.ModelManagementService/UnloadModel" and unload["device"] == "cpu"
    assert ML.UnloadModelRequest.FromString(unload["payload"]).model_id == "face"


def test_big_raw_inputs_move_to_the_frame():
    client = FakeClient()
    big, small = b"\x01" * 40000, b"\x02" * 8

    async def body(stub):
        req = K.ModelInferRequest(model_name="m1")
        req.inputs.add(name="a", datatype="UINT8", shape=[40000])
        req.inputs.add(name="b", datatype="UINT8", shape=[8])
        req.raw_input_contents.extend([big, small])
        await stub.ModelInfer(req)
        req = K.ModelInferRequest(model_name="m1")
        req.inputs.add(name="b", datatype="UINT8", shape=[8])
        req.raw_input_contents.append(small)
        await stub.ModelInfer(req)
    run_with_server(client, body)
    first, second = client.calls
    assert first["frame"] == big + small and first["extra"] == {"raw_lengths": [40000, 8]}
    assert not K.ModelInferRequest.FromString(first["payload"]).raw_input_contents
    assert second["frame"] is None
    assert list(K.ModelInferRequest.FromString(second["payload"]).raw_input_contents) == [small]
