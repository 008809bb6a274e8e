"""Load and soak: concurrent vision streams, generations and embedding calls for a fixed duration.

Loopback only (the service is started by this script on 127.0.0.1, ephemeral port) and bounded in time.
Reports requests served, errors by status, latency percentiles per RPC, and RSS per worker after warm-up
and at the end. Goals: no error other than the documented RESOURCE_EXHAUSTED (queue full); RSS growth
per worker under 5 % after warm-up.

    python -m bench.bench_soak --duration 300      # standalone; prints a table and JSON
    run(quick) -> rows for bench/run_all.py        # quick: 40 s, full: 300 s

Load: `vision_streams` bidi StreamFaceDetection streams at 15 fps (320x240 rgb through shared memory),
`gen_clients` clients calling GenerateText (SmolLM2-135M-Instruct, 16 new tokens) back to back,
`emb_clients` clients calling GenerateEmbeddings (all-MiniLM-L6-v2, 4 sentences) back to back,
and one client calling KServe ModelInfer (face_detection_short_range) at 20 Hz.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import pct, row  # noqa: E402

RSS_GOAL = 0.05
DOCUMENTED = {"RESOURCE_EXHAUSTED"}


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.lat = defaultdict(list)
        self.errors = Counter()
        self.messages = {}
        self.recording = False

    def ok(self, rpc: str, ms: float) -> None:
        if self.recording:
            with self.lock:
                self.lat[rpc].append(ms)

    def err(self, rpc: str, exc) -> None:
        code = exc.code().name if hasattr(exc, "code") else type(exc).__name__
        if self.recording:
            with self.lock:
                self.errors[(rpc, code)] += 1
                self.messages.setdefault((rpc, code), (exc.details() if hasattr(exc, "details") else str(exc))[:200])


def worker_rss(stub) -> dict:
    from protos import pythonml_pb2 as X
    st = stub.GetStats(X.StatsRequest(), timeout=10)
    return {w.worker_id: {"pool": w.pool, "pid": w.pid, "rss_mb": round(w.rss_mb, 1), "uss_mb": round(w.uss_mb, 1)}
            for w in st.workers}


def soak(duration_s: float, vision_streams: int = 2, gen_clients: int = 2, emb_clients: int = 4,
         warmup_s: float = 10.0, address: str = "") -> dict:
    import cv2
    import grpc
    import numpy as np
    from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
    from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
    from protos.kserve import grpc_service_pb2 as K, grpc_service_pb2_grpc as KG
    from tests.service import start_service

    svc = None
    if not address:
        svc = start_service(["--host", "127.0.0.1", "--pools", "vision,hf,litert", "--cuda", "off"],
                            wait_service="", timeout=300)
        address = svc.address
    assert address.startswith(("127.", "localhost")), "the soak runs on loopback only"
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 * 2**20)])
    stats = XG.StatsStub(channel)
    rec = Recorder()
    stop = threading.Event()
    bgr = cv2.imread(os.path.join(ROOT, "tests", "assets", "grace_hopper.jpg"))
    rgb = np.ascontiguousarray(cv2.cvtColor(cv2.resize(bgr, (320, 240)), cv2.COLOR_BGR2RGB)).tobytes()
    sentences = [f"Sentence {i}: the quick brown fox jumps over the lazy dog {i % 13} times." for i in range(64)]

    def vision_stream(i: int):
        stub = MLG.MediapipeServiceStub(channel)
        while not stop.is_set():
            sent = {}

            def frames():
                n = 0
                while not stop.is_set() and n < 600:   # a new stream every 40 s: open/close is soaked too
                    sent[n] = time.perf_counter()
                    yield ML.VideoFrame(frame_data=rgb, format="rgb", width=320, height=240, frame_number=n,
                                        timestamp_ms=66 * n)
                    n += 1
                    time.sleep(1 / 15)
            try:
                for r in stub.StreamFaceDetection(frames(), timeout=duration_s + warmup_s + 120):
                    t0 = sent.pop(r.frame_number, None)
                    if t0 is not None:
                        rec.ok("StreamFaceDetection frame", 1000 * (time.perf_counter() - t0))
            except grpc.RpcError as exc:
                rec.err("StreamFaceDetection frame", exc)

    def generator(i: int):
        stub = MLG.TransformersServiceStub(channel)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                parts = list(stub.GenerateText(ML.TextRequest(prompt=f"Tell me a fact about the number {i}.",
                                                              model="SmolLM2-135M-Instruct", max_length=16,
                                                              temperature=0.7), timeout=120))
                assert parts[-1].done
                rec.ok("GenerateText (16 tokens)", 1000 * (time.perf_counter() - t0))
            except grpc.RpcError as exc:
                rec.err("GenerateText (16 tokens)", exc)

    def embedder(i: int):
        stub = MLG.TransformersServiceStub(channel)
        k = i
        while not stop.is_set():
            texts = [sentences[(k + j) % len(sentences)] for j in range(4)]
            k += 4
            t0 = time.perf_counter()
            try:
                stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=texts, model="all-MiniLM-L6-v2"), timeout=60)
                rec.ok("GenerateEmbeddings (4 texts)", 1000 * (time.perf_counter() - t0))
            except grpc.RpcError as exc:
                rec.err("GenerateEmbeddings (4 texts)", exc)

    def inferer():
        stub = KG.GRPCInferenceServiceStub(channel)
        x = (np.random.default_rng(0).random((1, 128, 128, 3), dtype=np.float32) * 2 - 1).tobytes()
        while not stop.is_set():
            req = K.ModelInferRequest(model_name="face_detection_short_range", raw_input_contents=[x])
            req.inputs.add(name="input", datatype="FP32", shape=[1, 128, 128, 3])
            t0 = time.perf_counter()
            try:
                stub.ModelInfer(req, timeout=30)
                rec.ok("ModelInfer (litert)", 1000 * (time.perf_counter() - t0))
            except grpc.RpcError as exc:
                rec.err("ModelInfer (litert)", exc)
            time.sleep(0.05)

    threads = [threading.Thread(target=vision_stream, args=(i,), daemon=True) for i in range(vision_streams)]
    threads += [threading.Thread(target=generator, args=(i,), daemon=True) for i in range(gen_clients)]
    threads += [threading.Thread(target=embedder, args=(i,), daemon=True) for i in range(emb_clients)]
    threads += [threading.Thread(target=inferer, daemon=True)]
    try:
        for t in threads:
            t.start()
        time.sleep(warmup_s)                        # models auto-load, allocators reach steady state
        rss_start = worker_rss(stats)
        rec.recording = True
        t0 = time.time()
        samples = []
        while time.time() - t0 < duration_s:
            time.sleep(min(10.0, max(0.1, duration_s - (time.time() - t0))))
            samples.append((round(time.time() - t0, 1), {k: v["rss_mb"] for k, v in worker_rss(stats).items()}))
        elapsed = time.time() - t0
        rec.recording = False
        rss_end = worker_rss(stats)
        stop.set()
        for t in threads:
            t.join(30)
        final = stats.GetStats(X.StatsRequest(), timeout=10)
    finally:
        stop.set()
        channel.close()
        if svc is not None:
            svc.stop()
    per_rpc = {rpc: {"served": len(v), "per_s": round(len(v) / elapsed, 2), "p50_ms": round(pct(v, 50), 1),
                     "p95_ms": round(pct(v, 95), 1), "p99_ms": round(pct(v, 99), 1), "max_ms": round(max(v), 1)}
               for rpc, v in sorted(rec.lat.items()) if v}
    growth = {}
    for wid, start in rss_start.items():
        end = rss_end.get(wid)
        if end is None or end["pid"] != start["pid"]:
            growth[wid] = {"pool": start["pool"], "start_mb": start["rss_mb"], "end_mb": None, "growth": None,
                           "note": "worker replaced during the soak"}
            continue
        growth[wid] = {"pool": start["pool"], "start_mb": start["rss_mb"], "end_mb": end["rss_mb"],
                       "growth": round((end["rss_mb"] - start["rss_mb"]) / max(1.0, start["rss_mb"]), 4)}
    return {"duration_s": round(elapsed, 1), "warmup_s": warmup_s,
            "load": {"vision_streams_15fps": vision_streams, "gen_clients": gen_clients, "emb_clients": emb_clients,
                     "infer_clients_20hz": 1},
            "served": sum(len(v) for v in rec.lat.values()), "per_rpc": per_rpc,
            "errors": {f"{rpc}: {code}": n for (rpc, code), n in rec.errors.items()},
            "error_messages": {f"{rpc}: {code}": m for (rpc, code), m in rec.messages.items()},
            "undocumented_errors": sum(n for (rpc, code), n in rec.errors.items() if code not in DOCUMENTED),
            "rss": growth, "rss_samples": samples, "worker_crashes": final.worker_crashes,
            "worker_hangs": final.worker_hangs, "dropped_stream_frames": final.dropped_stream_frames}


def rows_of(res: dict) -> list:
    out = []
    note = (f"{res['duration_s']:.0f}s after {res['warmup_s']:.0f}s warm-up; load {res['load']}; "
            f"errors {res['errors'] or 'none'}; crashes {res['worker_crashes']}")
    out.append(row("soak", "requests served (all RPCs)", res["served"], res["served"] + res["undocumented_errors"],
                   goal="ratio 1.0 (no undocumented error)", unit="requests", note=note))
    for rpc, s in res["per_rpc"].items():
        out.append(row("soak", f"{rpc} p50 / p99 latency", s["p50_ms"], s["p99_ms"], unit="ms",
                       note=f"{s['served']} served ({s['per_s']}/s), p95 {s['p95_ms']} ms, max {s['max_ms']} ms"))
    for wid, g in sorted(res["rss"].items()):
        if g["growth"] is None:
            out.append(row("soak", f"RSS {wid}", float("nan"), g["start_mb"], goal="< 5 % growth", unit="MB",
                           note=g["note"]))
            continue
        out.append(row("soak", f"RSS {wid} end vs start (after warm-up)", g["end_mb"], g["start_mb"],
                       goal="ratio < 1.05", unit="MB", note=f"growth {100 * g['growth']:+.1f} %"))
    return out


def run(quick: bool = True, address: str = "") -> list:
    return rows_of(soak(40.0 if quick else 300.0, warmup_s=10.0 if quick else 20.0, address=address))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of measured load (after warm-up)")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--vision-streams", type=int, default=2)
    ap.add_argument("--gen-clients", type=int, default=2)
    ap.add_argument("--emb-clients", type=int, default=4)
    ap.add_argument("--address", default="", help="an already running service on loopback (default: start one)")
    ap.add_argument("--json", default="", help="also write the full result here")
    a = ap.parse_args(argv)
    res = soak(a.duration, a.vision_streams, a.gen_clients, a.emb_clients, a.warmup, a.address)
    for r in rows_of(res):
        print(f"{r['metric']}: {r['value']} (baseline {r['baseline']}) {r['unit']} - {r['note']}")
    print(json.dumps({k: v for k, v in res.items() if k != "rss_samples"}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    ok = res["undocumented_errors"] == 0 and all(g["growth"] is not None and g["growth"] < RSS_GOAL
                                                 for g in res["rss"].values())
    print("GOALS MET" if ok else "GOALS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
