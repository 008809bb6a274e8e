"""A pool on a Ray-placed worker vs the same pool local, in one run (issue 18, item 6).

The bench starts one Ray cluster on this machine (tests/ray_cluster.py: a head and one worker node with a
custom resource, 1 CPU each) and then, one service at a time (2 shared cores), run.py with the pool local
(`--pools "hf[threads=1]"`) or placed on that node (`--pools "hf[ray;num_cpus=1;resources=bench_node:1]"
--ray-address ...`, one thread too: a Ray-placed worker's thread budget is its num_cpus). The Ray-placed
worker joins the broker over tcp with CurveZMQ and gets its frames copied inline by the broker; the local
one is on ipc with frames in shared memory. Both run on this machine, so the difference is that path, not
a network.
  - embeddings (all-MiniLM-L6-v2, hf pool; bench_hf's sentences): one client's round trip p50/p99 (calls
    in a row), and the throughput of 8 and 32 (--clients) concurrent clients each sending one sentence per
    request;
  - an H.264 640x480 face-detection stream (bench_vision's frames, encoder and client): frames per second
    with IN_FLIGHT frames in flight, and the per-frame round trip p50/p99 with one frame in flight.
Sides are measured in turns (local, Ray, then Ray, local, ...): a burst of someone else's work on the shared
machine falls on both. Latencies are pooled over the turns, throughputs are medians of the turns. Prints a
table with the ratio Ray/local per metric and the range of its per-turn ratios (how much the load moved it).
The cluster, the services and their workers are gone at the end (also on Ctrl-C or SIGTERM); the bench
checks that no process of its cluster outlived it.

    flock /tmp/pml-bench.lock .venv/bin/python -m bench.bench_ray [--turns 6] [--clients 8 32] ...
Not part of run_all (no `run`): it needs Ray (scripts/setup.sh --ray).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import offline, pct, run_concurrent  # noqa: E402

offline()

NODE_RESOURCE = "bench_node"   # the worker node's custom resource: a Ray-placed pool asks for it
SIDES = ("local", "ray")
SERVICE_OF = {"hf": "ml.TransformersService", "vision": "ml.MediapipeService"}


def pools_flag(pool: str, side: str) -> list:
    """run.py arguments for `pool` local or placed on the worker node, one thread each."""
    if side == "local":
        return ["--pools", f"{pool}[threads=1]"]
    return ["--pools", f"{pool}[ray;num_cpus=1;resources={NODE_RESOURCE}:1]"]


def ready_worker(channel, pool: str, side: str, timeout: float = 120.0):
    """The pool's one worker once it is ready, placed as `side` says."""
    from tests.service import stats, wait_for

    def check():
        ws = [w for w in stats(channel).workers
              if w.pool == pool and w.state == "ready" and w.placement == side]
        return ws[0] if ws else None
    return wait_for(check, timeout, interval=0.2, message=f"no ready {side} {pool} worker")


# ------------------------------------------------------------------ embeddings
async def _embeddings(address: str, calls: int, clients: list, rounds: int) -> dict:
    """One client's round trips (ms, `calls` in a row) and, for each count in `clients`, that many
    concurrent clients' sentences per second (each client on its own channel)."""
    import grpc
    from bench.bench_hf import EMBED_MODEL, SENTENCES
    from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
    most = max(clients)
    chans = [grpc.aio.insecure_channel(address) for _ in range(most)]
    stubs = [MLG.TransformersServiceStub(c) for c in chans]
    turn = {"i": 0, "n": most}

    async def call():
        i = turn["i"]
        turn["i"] += 1
        await stubs[i % turn["n"]].GenerateEmbeddings(ML.GenerateEmbeddingsRequest(
            texts=[SENTENCES[i % len(SENTENCES)]], model=EMBED_MODEL), timeout=120)
    out: dict = {}
    try:
        await stubs[0].GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=["warm up"], model=EMBED_MODEL),
                                          timeout=180)   # auto-load
        await run_concurrent(call, most, 2 * most)   # every channel connected, the batcher warm
        out["one"] = await run_concurrent(call, 1, calls)
        for n in clients:
            turn["n"] = n
            t0 = time.perf_counter()
            await run_concurrent(call, n, n * rounds)
            out[f"rate{n}"] = n * rounds / (time.perf_counter() - t0)
    finally:
        for c in chans:
            await c.close()
    return out


# ------------------------------------------------------------------ H.264 face stream
def _face_stream(address: str, data: list, warmup: int) -> dict:
    """Frames per second with IN_FLIGHT in flight, and per-frame round trips (ms) with one in flight."""
    from bench.bench_vision import IN_FLIGHT, _stub, through_service
    channel, stub = _stub(address)
    try:
        through_service(stub, "face", "h264", data[:warmup], 1)        # the model loaded, the decoder warm
        frames = data[:len(data) - warmup]                             # a stream begins with its IDR frame
        fps = through_service(stub, "face", "h264", frames, IN_FLIGHT)[0]
        rtt = through_service(stub, "face", "h264", frames, 1)[1]
    finally:
        channel.close()
    return {"fps": fps, "rtt": [1000 * s for s in rtt]}


# ------------------------------------------------------------------ one service, one side, one turn
def measure_side(workload: str, side: str, cluster_address: str, args, data: list) -> dict:
    """Start the service with the workload's pool on `side`, wait for its worker, measure, stop the service."""
    from tests.service import start_service
    pool = "hf" if workload == "embeddings" else "vision"
    extra = ["--ray-address", cluster_address] if side == "ray" else []
    t0 = time.perf_counter()
    with start_service([*pools_flag(pool, side), *extra, "--cuda", "off", "--log-level", "warning"],
                       wait_service=SERVICE_OF[pool]) as svc:
        w = ready_worker(svc.channel(), pool, side)
        started = time.perf_counter() - t0
        if workload == "embeddings":
            out = asyncio.run(_embeddings(svc.address, args.calls, args.clients, args.rounds))
        else:
            out = _face_stream(svc.address, data, args.warmup)
    out["where"] = f"node {w.node[:8]} threads={w.threads} nice={w.nice} cpus={w.cpus or 'any'}"
    out["start_s"] = started
    return out


def _metric(rows: list, metric: str, unit: str, sides: dict, turn_value, pooled) -> None:
    """One row: the value of each side over all its turns (`pooled`), Ray/local, and the range of the
    per-turn ratios (turn k of Ray over turn k of local: both measured within seconds of each other)."""
    local, ray = pooled(sides["local"]), pooled(sides["ray"])
    per_turn = [turn_value(r) / turn_value(b) for r, b in zip(sides["ray"], sides["local"])]
    rows.append((metric, unit, local, ray, ray / local, min(per_turn), max(per_turn)))


def table(res: dict, args) -> list:
    """(metric, unit, local, Ray, Ray/local, lowest and highest per-turn Ray/local) rows from
    {workload: {side: [per-turn results]}}: latencies pooled over the turns, rates their median."""
    rows: list = []

    def latency(key, q):
        return (lambda r: pct(r[key], q)), (lambda rs: pct([x for r in rs for x in r[key]], q))

    def rate(key):
        return (lambda r: r[key]), (lambda rs: statistics.median(r[key] for r in rs))
    if "embeddings" in res:
        emb = res["embeddings"]
        for q in (50, 99):
            _metric(rows, f"embeddings, 1 client, round trip p{q}", "ms", emb, *latency("one", q))
        for n in args.clients:
            _metric(rows, f"embeddings, {n} clients, throughput", "sentences/s", emb, *rate(f"rate{n}"))
    if "face" in res:
        face = res["face"]
        _metric(rows, "H.264 640x480 face stream, 3 in flight", "fps", face, *rate("fps"))
        for q in (50, 99):
            _metric(rows, f"H.264 face stream, 1 in flight, per-frame round trip p{q}", "ms", face, *latency("rtt", q))
    return rows


def print_report(res: dict, args) -> None:
    print(f"{args.turns} turn(s) per side (local, Ray alternating first), one service at a time; "
          f"embeddings: {args.calls} calls in a row + {'/'.join(map(str, args.clients))} clients x "
          f"{args.rounds} requests of one sentence per turn; face: {args.frames} H.264 frames per pass per turn")
    print("| metric | unit | local | Ray-placed | Ray/local | per-turn Ray/local |\n|---|---|---|---|---|---|")
    for metric, unit, local, ray, ratio, lo, hi in table(res, args):
        print(f"| {metric} | {unit} | {local:.2f} | {ray:.2f} | {ratio:.2f} | {lo:.2f}..{hi:.2f} |")
    for workload, sides in res.items():
        for side in SIDES:
            rs = sides[side]
            print(f"  {workload} {side}: {rs[0]['where']}; service start to ready worker "
                  f"{', '.join('%.1f' % r['start_s'] for r in rs)} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Run it under flock /tmp/pml-bench.lock; needs Ray (scripts/setup.sh --ray).")
    ap.add_argument("--turns", type=int, default=6, help="turns per side (services started per side and workload)")
    ap.add_argument("--calls", type=int, default=200, help="one client's embedding calls in a row, per turn")
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 32], help="concurrent embedding clients (counts)")
    ap.add_argument("--rounds", type=int, default=16, help="requests of each concurrent client, per turn")
    ap.add_argument("--frames", type=int, default=600, help="H.264 frames per pass (fps pass and latency pass)")
    ap.add_argument("--warmup", type=int, default=30, help="H.264 frames sent before each side is measured")
    ap.add_argument("--only", choices=("embeddings", "face"), help="one workload only")
    args = ap.parse_args(argv)

    from tests.ray_cluster import processes_of, ray_available, shutdown, start_cluster
    if not ray_available:
        print("Ray is not installed: scripts/setup.sh --ray", file=sys.stderr)
        return 2
    from bench.bench_vision import load_frames, payloads
    data = payloads("h264", load_frames(), args.frames + args.warmup)

    # Ctrl-C and SIGTERM raise KeyboardInterrupt: the finally blocks stop the service and the cluster (SIGINT too
    # when started in the background, where a shell leaves it ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    t0 = time.perf_counter()
    workloads = [args.only] if args.only else ["embeddings", "face"]
    res = {w: {s: [] for s in SIDES} for w in workloads}
    cluster, ours, left = None, [], ""
    try:
        cluster = start_cluster([{"num_cpus": 1, "resources": {NODE_RESOURCE: 1}}])
        signal.signal(signal.SIGTERM, signal.default_int_handler)   # ours again, not the Ray node's: stop in order
        print(f"Ray cluster at {cluster.address} up after {time.perf_counter() - t0:.1f} s", flush=True)
        for turn in range(args.turns):
            order = SIDES if turn % 2 == 0 else SIDES[::-1]
            for workload in workloads:
                for side in order:
                    res[workload][side].append(measure_side(workload, side, cluster.address, args, data))
                    print(f"turn {turn + 1}: {workload} {side} done at {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        if cluster is not None:
            ours = processes_of(cluster.address)
            try:
                shutdown(cluster)   # and checks that none of its processes is left, removes its session folder
            except AssertionError as exc:
                left = str(exc)
                print(f"WARNING: {left}", file=sys.stderr)
    print_report(res, args)
    print(f"total {time.perf_counter() - t0:.0f} s; {len(ours)} processes of the bench's cluster, "
          + ("some left after it stopped" if left else "none left after it stopped"))
    return 1 if left else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the service and the cluster were stopped", file=sys.stderr)
        sys.exit(130)
