"""The OpenAI-compatible HTTP API (run.py --http-port) against gRPC, in one run on one service.

1. Chat: tokens/s of a streamed greedy chat completion (SmolLM2-135M-Instruct) through the official `openai`
   client (POST /v1/chat/completions, stream=True) vs the same messages and settings through gRPC
   ChatCompletion. Streamed pieces are counted on both sides (greedy: the same tokens). Goal: ratio >= 0.9.
2. Time to first token over HTTP vs gRPC (ratio = gRPC / HTTP, so >= 0.9 means HTTP is within ~11%).
3. Embeddings: 32 concurrent clients, one sentence per request (all-MiniLM-L6-v2, the worker's dynamic
   batching) over HTTP (POST /v1/embeddings, 32 aiohttp sessions in one event loop: a light load generator)
   vs gRPC GenerateEmbeddings (32 grpc.aio channels in one event loop). Goal: ratio >= 0.9.
Each HTTP / gRPC pair alternates, so that a noisy moment hurts both sides alike; the median run is kept.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

THREADS = 2
CLIENTS = 32
CHAT_MODEL = "SmolLM2-135M-Instruct"
EMBED_MODEL = "all-MiniLM-L6-v2"
SENTENCES = [f"Sentence {i}: the quick brown fox jumps over the lazy dog near river {i % 7}." for i in range(256)]
MESSAGES = [{"role": "user", "content": "Write a detailed story about a dragon who learns to cook."}]


def _chat_http(client, max_new: int) -> tuple[float, float, int]:
    """(seconds, time to first piece, pieces) of one streamed chat completion through the openai client."""
    t0 = time.perf_counter()
    first, n = None, 0
    stream = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=max_new,
                                            temperature=0, stream=True)
    for chunk in stream:
        for c in chunk.choices:
            if c.delta and c.delta.content:
                if first is None:
                    first = time.perf_counter() - t0
                n += 1
    return time.perf_counter() - t0, first, n


def _chat_grpc(stub, max_new: int) -> tuple[float, float, int]:
    from protos import ml_inference_pb2 as ML
    req = ML.ChatRequest(messages=[ML.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
                         model=CHAT_MODEL, max_length=max_new, temperature=0.0)
    t0 = time.perf_counter()
    first, n = None, 0
    for r in stub.ChatCompletion(req, timeout=300):
        if r.content:
            if first is None:
                first = time.perf_counter() - t0
            n += 1
    return time.perf_counter() - t0, first, n


async def _emb_grpc(address: str, per_client: int) -> tuple[float, int]:
    import grpc
    from protos import ml_inference_pb2 as ML
    from protos import ml_inference_pb2_grpc as MLG
    chans = [grpc.aio.insecure_channel(address) for _ in range(CLIENTS)]
    stubs = [MLG.TransformersServiceStub(c) for c in chans]
    await asyncio.gather(*(s.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=["warm up"], model=EMBED_MODEL),
                                                timeout=120) for s in stubs))
    errors = []

    async def client(i):
        try:
            for r in range(per_client):
                await stubs[i].GenerateEmbeddings(ML.GenerateEmbeddingsRequest(
                    texts=[SENTENCES[(i + CLIENTS * r) % len(SENTENCES)]], model=EMBED_MODEL), timeout=120)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(exc)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    dt = time.perf_counter() - t0
    for c in chans:
        await c.close()
    return CLIENTS * per_client / dt, len(errors)


async def _emb_http(base_url: str, per_client: int) -> tuple[float, int]:
    import aiohttp
    sessions = [aiohttp.ClientSession() for _ in range(CLIENTS)]  # one connection each: 32 independent clients
    url = base_url + "/embeddings"
    headers = {"Authorization": "Bearer unused"}
    errors = []

    async def one(s, text):
        async with s.post(url, json={"model": EMBED_MODEL, "input": [text], "encoding_format": "float"},
                          headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            body = await resp.json()
            if resp.status != 200 or len(body["data"][0]["embedding"]) != 384:
                raise RuntimeError(f"HTTP {resp.status}: {str(body)[:200]}")
    try:
        await asyncio.gather(*(one(s, "warm up") for s in sessions))

        async def client(i):
            try:
                for r in range(per_client):
                    await one(sessions[i], SENTENCES[(i + CLIENTS * r) % len(SENTENCES)])
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(exc)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(CLIENTS)))
        dt = time.perf_counter() - t0
    finally:
        for s in sessions:
            await s.close()
    return CLIENTS * per_client / dt, len(errors)


def run(quick: bool = True) -> list:
    import openai
    from protos import ml_inference_pb2 as ML
    from protos import ml_inference_pb2_grpc as MLG
    from tests.service import free_port, start_service
    rounds, max_new, repeats = (8, 64, 1) if quick else (32, 256, 3)
    http_port = free_port()
    with start_service(args=["--pools", "hf", "--cuda", "off", "--worker-threads", str(THREADS),
                             "--http-port", str(http_port)],
                       env={"PYTHONML_TOKEN": ""}, wait_service="ml.TransformersService") as svc:
        base_url = f"http://127.0.0.1:{http_port}/v1"
        stub = MLG.TransformersServiceStub(svc.channel())
        client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=300, max_retries=0)
        # auto-load and warm both paths
        stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=["warm up"], model=EMBED_MODEL), timeout=120)
        _chat_grpc(stub, 4)
        _chat_http(client, 4)

        e_http, e_grpc, err_http, err_grpc = [], [], 0, 0
        for _ in range(repeats):
            r, e = asyncio.run(_emb_grpc(svc.address, rounds))
            e_grpc.append(r)
            err_grpc += e
            r, e = asyncio.run(_emb_http(base_url, rounds))
            e_http.append(r)
            err_http += e

        c_http, c_grpc = [], []
        for _ in range(repeats):
            c_grpc.append(_chat_grpc(stub, max_new))
            c_http.append(_chat_http(client, max_new))
        client.close()

    def rate(runs):
        return statistics.median(n / dt for dt, _, n in runs)

    def ttft(runs):
        return statistics.median(f for _, f, _ in runs)
    g_rate, h_rate = rate(c_grpc), rate(c_http)
    g_ttft, h_ttft = ttft(c_grpc), ttft(c_http)
    g_emb, h_emb = statistics.median(e_grpc), statistics.median(e_http)
    n_note = f"pieces HTTP {[n for _, _, n in c_http]}, gRPC {[n for _, _, n in c_grpc]}"
    return [
        {"bench": "openai", "metric": "chat tokens/s: HTTP /v1/chat/completions (stream, openai client) vs gRPC ChatCompletion",
         "value": round(h_rate, 1), "baseline": round(g_rate, 1), "ratio": round(h_rate / g_rate, 2),
         "goal": ">= 0.9", "unit": "tokens/s",
         "note": f"{CHAT_MODEL} greedy, max_tokens {max_new}, {THREADS} threads, median of {repeats}; {n_note}"},
        {"bench": "openai", "metric": "chat time to first token: HTTP vs gRPC (ratio = gRPC / HTTP)",
         "value": round(h_ttft * 1000, 1), "baseline": round(g_ttft * 1000, 1), "ratio": round(g_ttft / h_ttft, 2),
         "goal": ">= 0.9", "unit": "ms", "note": f"median of {repeats}; lower is better, so the ratio is inverted"},
        {"bench": "openai", "metric": "embeddings throughput, 32 concurrent clients: HTTP /v1/embeddings vs gRPC GenerateEmbeddings",
         "value": round(h_emb, 1), "baseline": round(g_emb, 1), "ratio": round(h_emb / g_emb, 2),
         "goal": ">= 0.9", "unit": "sentences/s",
         "note": f"{EMBED_MODEL}, 32 clients x {rounds} requests of 1 sentence, median of {repeats}; "
                 f"errors HTTP {err_http}, gRPC {err_grpc}"},
    ]


if __name__ == "__main__":
    for row in run(quick="--full" not in sys.argv):
        print(row)
