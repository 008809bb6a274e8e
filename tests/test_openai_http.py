"""The OpenAI-compatible HTTP API (--http-port, facade/openai_http.py) against the real service, raw HTTP."""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.service import ROOT, free_port, start_service
from tests.test_hf_fixtures import build_tiny_llama

pytestmark = pytest.mark.slow

TOKEN = "s3cret-http-token"


def _req(port, path, body=None, *, method=None, headers=None, raw=None, timeout=300):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    r = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _error(status_body):
    err = json.loads(status_body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    build_tiny_llama(models / "tiny-llama")
    port = free_port()
    s = start_service(args=["--pools", "hf", "--cuda", "off", "--http-port", str(port), "--max-message-mb", "1",
                            "--max-response-mb", "0.03125", "--model-dir", str(models)],
                      wait_service="ml.TransformersService", timeout=180)
    s.http_port = port
    yield s
    s.stop()


def test_models_lists_builtins(svc):
    status, _, body = _req(svc.http_port, "/v1/models")
    assert status == 200
    out = json.loads(body)
    ids = {m["id"]: m for m in out["data"]}
    assert out["object"] == "list"
    assert "SmolLM2-135M-Instruct" in ids and "all-MiniLM-L6-v2" in ids and "whisper-tiny.en" in ids
    assert all(isinstance(m["loaded"], bool) for m in out["data"])


def test_chat_non_streamed(svc):
    status, _, body = _req(svc.http_port, "/v1/chat/completions", {
        "model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 8,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert status == 200, body
    out = json.loads(body)
    assert out["object"] == "chat.completion"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    assert 1 <= out["usage"]["completion_tokens"] <= 8


def test_chat_streamed_sse(svc):
    status, headers, body = _req(svc.http_port, "/v1/chat/completions", {
        "model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 8, "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hello."}]})
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_completions_stop_cuts(svc):
    status, _, body = _req(svc.http_port, "/v1/completions", {
        "model": "SmolLM2-135M-Instruct", "prompt": "Count: 1, 2, 3, 4, 5, 6, 7", "temperature": 0,
        "max_tokens": 30, "stop": [","]})
    assert status == 200, body
    out = json.loads(body)
    assert "," not in out["choices"][0]["text"] and out["choices"][0]["finish_reason"] == "stop"


def test_client_disconnect_cancels_generation(svc):
    body = json.dumps({"model": "tiny-llama", "prompt": "the quick brown fox", "max_tokens": 60000,
                       "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", svc.http_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 3:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")
    # the worker is free again straight away: a short request completes quickly
    t0 = time.time()
    status, _, out = _req(svc.http_port, "/v1/completions", {"model": "tiny-llama", "prompt": "to be",
                                                             "max_tokens": 4}, timeout=30)
    assert status == 200, out
    assert json.loads(out)["usage"]["completion_tokens"] == 4 and time.time() - t0 < 10


def test_deadline_504(svc):
    status, _, out = _req(svc.http_port, "/v1/completions", {"model": "tiny-llama", "prompt": "the quick",
                                                             "max_tokens": 60000},
                          headers={"X-Request-Timeout": "1.0"}, timeout=30)
    assert status == 504 and _error(out)["type"] == "timeout_error"


def test_transcriptions_verbose_json(svc):
    audio = open(f"{ROOT}/tests/assets/audio/kitchen_lights.wav", "rb").read()
    boundary = "pmlboundary7d2f"
    parts = []
    for name, value in (("model", "whisper-1"), ("response_format", "verbose_json")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 f'Content-Type: audio/wav\r\n\r\n'.encode() + audio + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    status, _, out = _req(svc.http_port, "/v1/audio/transcriptions", raw=b"".join(parts),
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, out
    r = json.loads(out)
    assert "kitchen" in r["text"].lower() and r["segments"]
    assert all(s["end"] >= s["start"] >= 0 for s in r["segments"])


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_embeddings(svc, fmt):
    status, _, body = _req(svc.http_port, "/v1/embeddings", {
        "model": "all-MiniLM-L6-v2", "input": ["A man plays a guitar.", "Stocks fell."], "encoding_format": fmt})
    assert status == 200, body
    out = json.loads(body)
    assert [d["index"] for d in out["data"]] == [0, 1]
    for d in out["data"]:
        v = (np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if fmt == "base64"
             else np.array(d["embedding"]))
        assert v.shape == (384,)


def test_embeddings_single_string(svc):
    status, _, body = _req(svc.http_port, "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hello"})
    assert status == 200 and len(json.loads(body)["data"][0]["embedding"]) == 384


def test_unknown_model_404(svc):
    status, _, body = _req(svc.http_port, "/v1/chat/completions", {
        "model": "no-such-org/no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 404, body
    assert _error(body)["type"] == "not_found_error"


def test_bad_json_400(svc):
    status, _, body = _req(svc.http_port, "/v1/chat/completions", raw=b"{not json")
    assert status == 400 and _error(body)["type"] == "invalid_request_error"


def test_bad_parameter_400(svc):
    status, _, body = _req(svc.http_port, "/v1/chat/completions", {
        "model": "SmolLM2-135M-Instruct", "n": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and _error(body)["param"] == "n"


def test_too_large_413(svc):
    big = {"model": "all-MiniLM-L6-v2", "input": "x" * (2 * 2**20)}
    status, _, body = _req(svc.http_port, "/v1/embeddings", big)
    assert status == 413 and _error(body)["type"] == "invalid_request_error"


def test_answer_over_max_response_mb_413(svc):
    # --max-response-mb 0.03125 (32 KiB): 8 embeddings as JSON floats are ~64 KB, as base64 ~16 KB
    texts = [f"sentence number {i} about nothing in particular" for i in range(8)]
    status, _, body = _req(svc.http_port, "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": texts})
    assert status == 413, body
    err = _error(body)
    assert err["code"] == "response_too_large"
    assert ("above the client's 0.03125 MiB limit (--max-response-mb): send fewer texts per GenerateEmbeddings"
            in err["message"])
    status, _, body = _req(svc.http_port, "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": texts,
                                                            "encoding_format": "base64"})
    assert status == 200 and len(json.loads(body)["data"]) == 8


def test_own_process_harness_serves_on_the_same_broker(svc):
    """bench/openai_own_process.py: the same app in a process of its own, attached to the service's broker
    frontend (the other way bench/bench_openai.py measures), answers like the in-loop one."""
    import subprocess
    import sys

    from bench.openai_own_process import frontend_of
    proc = subprocess.Popen([sys.executable, f"{ROOT}/bench/openai_own_process.py", "--broker", frontend_of(svc.port),
                             "--max-response-mb", "0.03125"], stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("READY "), line
        port = int(line.split()[1])
        status, _, body = _req(port, "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hello"})
        assert status == 200 and len(json.loads(body)["data"][0]["embedding"]) == 384
        status, _, body = _req(port, "/v1/chat/completions", {"model": "no-such-org/no-such-model",
                                                              "messages": [{"role": "user", "content": "hi"}]})
        assert status == 404 and _error(body)["type"] == "not_found_error"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()


def test_wrong_key_401():
    port = free_port()
    s = start_service(args=["--pools", "hf", "--cuda", "off", "--http-port", str(port)],
                      env={"PYTHONML_TOKEN": TOKEN}, wait_service=None)
    try:
        msg = {"model": "all-MiniLM-L6-v2", "input": "hi"}
        status, headers, body = _req(port, "/v1/embeddings", msg)
        assert status == 401 and _error(body)["type"] == "authentication_error"
        status, _, body = _req(port, "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and _error(body)["code"] == "invalid_api_key"
        status, _, body = _req(port, "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["object"] == "list"
    finally:
        s.stop()


# ---- the app alone, on a stub broker client: usage.prompt_tokens, the response limit, streamed chunks ----------
class _StubClient:
    """BrokerClient's calls, answering from canned worker replies; remembers whether a stream was closed."""

    def __init__(self, parts=(), unary=b""):
        self.parts, self.unary_reply, self.closed = list(parts), unary, False

    async def stream(self, method, pool, payload, **kw):
        try:
            for p in self.parts:
                yield p
        finally:
            self.closed = True

    async def unary(self, method, pool, payload, **kw):
        return self.unary_reply

    async def query(self, what):
        return {"models": []}


def _app_call(stub, path, body, max_response_bytes=4 * 2**20):
    """(status, body bytes) of one POST to an OpenAIHTTP app on `stub`, on a loopback port of its own."""
    import asyncio

    import aiohttp

    from facade.budget import ByteBudget
    from facade.openai_http import OpenAIHTTP

    async def go():
        app = OpenAIHTTP(stub, ByteBudget(2**30), "", max_response_bytes=max_response_bytes)
        port = await app.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}{path}", json=body) as r:
                return r.status, await r.read()
        finally:
            await app.stop()
    return asyncio.run(go())


def _chat_parts(texts, prompt_tokens=0, final=True):
    from protos import ml_inference_pb2 as ML
    out = [ML.ChatResponse(content=t, tokens_generated=i + 1, prompt_tokens=prompt_tokens).SerializeToString()
           for i, t in enumerate(texts)]
    if final:
        out.append(ML.ChatResponse(done=True, finish_reason="length", tokens_generated=len(texts),
                                   prompt_tokens=prompt_tokens).SerializeToString())
    return out


def _events(raw: bytes) -> list:
    return [e[len("data: "):] for e in raw.decode().split("\n\n") if e.startswith("data: ")]


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_usage_prompt_tokens_from_the_worker():
    status, body = _app_call(_StubClient(_chat_parts(["a", "b"], prompt_tokens=17)), "/v1/chat/completions", CHAT)
    assert status == 200, body
    assert json.loads(body)["usage"] == {"prompt_tokens": 17, "completion_tokens": 2, "total_tokens": 19}
    status, body = _app_call(_StubClient(_chat_parts(["a", "b"], prompt_tokens=17)), "/v1/chat/completions",
                             dict(CHAT, stream=True, stream_options={"include_usage": True}))
    assert json.loads(_events(body)[-2])["usage"]["prompt_tokens"] == 17


def test_streamed_chunks_from_the_template_are_openai_chunks():
    texts = ['say "hi"\n', "é\u2028", "\\"]
    status, body = _app_call(_StubClient(_chat_parts(texts)), "/v1/chat/completions", dict(CHAT, stream=True))
    assert status == 200, body
    events = _events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == texts + [None]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and "role" not in chunks[1]["choices"][0]["delta"]
    for c in chunks:
        assert set(c) == {"id", "object", "created", "model", "choices"} and c["object"] == "chat.completion.chunk"
        assert c["id"] == chunks[0]["id"] and c["model"] == "m"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]


def test_json_answer_over_max_response_is_413_with_the_grpc_refusal():
    from protos import ml_inference_pb2 as ML
    out = ML.GeneratedEmbeddingsResponse(embeddings=[ML.GeneratedEmbedding(values=[0.123456789] * 384)] * 8,
                                         prompt_tokens=40).SerializeToString()
    body = {"model": "m", "input": ["x"] * 8}
    status, raw = _app_call(_StubClient(unary=out), "/v1/embeddings", body, max_response_bytes=20000)
    assert status == 413, raw
    err = _error(raw)
    assert err["code"] == "response_too_large" and err["type"] == "invalid_request_error"
    assert err["message"].startswith("ml.TransformersService/GenerateEmbeddings: the answer is ")
    assert "above the client's 0.0190735 MiB limit (--max-response-mb): send fewer texts" in err["message"]
    # the same answer base64-encoded fits
    status, raw = _app_call(_StubClient(unary=out), "/v1/embeddings", dict(body, encoding_format="base64"),
                            max_response_bytes=20000)
    assert status == 200, raw
    assert json.loads(raw)["usage"] == {"prompt_tokens": 40, "total_tokens": 40}


def test_sse_event_over_max_response():
    # the first event too large: nothing sent yet, so a plain 413; the worker's stream is closed (cancelled)
    stub = _StubClient(_chat_parts(["x" * 5000, "y"]))
    status, raw = _app_call(stub, "/v1/chat/completions", dict(CHAT, stream=True), max_response_bytes=4096)
    assert status == 413 and "message 0 of the stream is" in _error(raw)["message"] and stub.closed
    # a later event too large: the stream ends with the error event, then [DONE]
    stub = _StubClient(_chat_parts(["ok", "x" * 5000, "never sent"]))
    status, raw = _app_call(stub, "/v1/chat/completions", dict(CHAT, stream=True), max_response_bytes=4096)
    events = _events(raw)
    assert status == 200 and events[-1] == "[DONE]" and stub.closed
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "ok"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "response_too_large" and "message 1 of the stream is" in err["message"]
    assert "never sent" not in raw.decode()


def test_float_array_is_json_and_gives_back_each_float32():
    from facade.openai_http import _float_array
    v = (np.random.default_rng(1).standard_normal(384) * np.logspace(-12, 6, 384)).astype(np.float32)
    v[:3] = [0.0, -0.0, np.float32(1e-45)]
    back = np.array(json.loads(_float_array(v.tolist())), dtype=np.float32)
    assert np.array_equal(back, v)   # bit for bit, but -0 (spelled -0, which Python's json reads as 0)
    assert _float_array([]) == b"[]"
    assert json.loads(_float_array([1.5, float("nan")]).replace(b"NaN", b"null")) == [1.5, None]


def test_big_request_and_answer_take_the_thread_path(monkeypatch):
    """A request body and an embeddings answer above OFFLOAD_BYTES are parsed / written off the event loop,
    with the same result."""
    import asyncio

    from facade import openai_http
    from facade.openai_http import OFFLOAD_BYTES
    offloaded = []
    real = asyncio.to_thread

    async def counting(fn, *args):
        offloaded.append(fn.__name__)
        return await real(fn, *args)
    monkeypatch.setattr(openai_http.asyncio, "to_thread", counting)
    from protos import ml_inference_pb2 as ML
    vecs = np.random.default_rng(2).standard_normal((64, 384)).astype(np.float32)
    out = ML.GeneratedEmbeddingsResponse(embeddings=[ML.GeneratedEmbedding(values=v.tolist()) for v in vecs])
    raw = out.SerializeToString()
    texts = ["t" * 2000] * 64
    assert len(raw) > OFFLOAD_BYTES and len(json.dumps(texts)) > OFFLOAD_BYTES
    for fmt in ("float", "base64"):
        status, body = _app_call(_StubClient(unary=raw), "/v1/embeddings",
                                 {"model": "m", "input": texts, "encoding_format": fmt})
        assert status == 200, body
        data = json.loads(body)["data"]
        got = (np.array([d["embedding"] for d in data], dtype=np.float32) if fmt == "float" else
               np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]))
        assert [d["index"] for d in data] == list(range(64)) and np.array_equal(got, vecs)
    assert offloaded == ["loads", "_embeddings_body"] * 2
