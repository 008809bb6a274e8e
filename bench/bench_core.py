"""Core benchmarks (issue 2): no-op round trip through facade -> broker -> fake worker versus a bare
grpc.aio echo server, at 1 and 32 concurrent clients; and the 1920x1080x3 frame hand-off through
shared memory versus inline in the ZeroMQ message. Both sides measured in the same run.

The single-process peer (bench/peers/single_process.py) has no broker: its no-op is Echo answered by a
no-op handler on its thread pool (event loop -> pool thread -> event loop), the dispatch every model call in
that design pays. Its rows compare that floor with the same bare gRPC server, so ours / bare and peer / bare
sit side by side: what our two extra hops (facade -> broker -> worker) cost beyond a thread-pool hand-off.
The three are measured in turns (REPEATS each), so that a burst of load on a shared machine hits all three."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from bench.common import ROOT, pct, row, run_concurrent

import grpc  # noqa: E402

from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG  # noqa: E402
from bench.peers.launch import start_peer  # noqa: E402
from tests.service import PYTHON, free_port, start_service  # noqa: E402

REPEATS = 3   # turns of bare, ours, peer; each side's latencies pooled over its turns


async def _latencies(address: str, pool: str, concurrency: int, total: int) -> list:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = XG.DiagnosticsStub(ch)
        req = X.EchoRequest(pool=pool, payload=b"x")

        async def call():
            async for _ in stub.Echo(req, timeout=30):
                pass
        await run_concurrent(call, concurrency, 50)  # warm-up
        return await run_concurrent(call, concurrency, total)


def run(quick: bool = False) -> list:
    total = 300 if quick else 2000
    rows = []
    port = free_port()
    bare = subprocess.Popen([PYTHON, os.path.join(ROOT, "bench", "bare_echo_server.py"), str(port)],
                            stdout=subprocess.PIPE)
    bare.stdout.readline()
    try:
        with start_service(["--pools", "fake", "--log-level", "warning"], env={"PML_FAKE_CAPACITY": "32"}) as svc, \
                start_peer("echo") as peer:
            for conc in (1, 32):
                base, ours, other = [], [], []
                for _ in range(REPEATS):   # in turns: a burst of someone else's work hits every side
                    base += asyncio.run(_latencies(f"127.0.0.1:{port}", "fake", conc, total // REPEATS))
                    ours += asyncio.run(_latencies(svc.address, "fake", conc, total // REPEATS))
                    other += asyncio.run(_latencies(peer.address, "fake", conc, total // REPEATS))
                for q in (50, 99):
                    note = f"single-process peer {pct(other, q) / pct(base, q):.2f}x bare"
                    rows.append(row("core round trip", f"p{q} no-op, {conc} clients (ms)", pct(ours, q), pct(base, q),
                                    goal="p50 <= 2x bare gRPC" if q == 50 else "", unit="ms", note=note))
                    rows.append(row("core round trip", f"p{q} no-op via single-process peer, {conc} clients (ms)",
                                    pct(other, q), pct(base, q), unit="ms",
                                    note="no broker: Echo on the peer's thread pool; its own floor; "
                                         f"ours {pct(ours, q) / pct(base, q):.2f}x bare"))
                qps_ours = conc * 1000 / (sum(ours) / len(ours))
                qps_base = conc * 1000 / (sum(base) / len(base))
                qps_peer = conc * 1000 / (sum(other) / len(other))
                rows.append(row("core round trip", f"throughput, {conc} clients (req/s)", qps_ours, qps_base, unit="req/s",
                                note=f"single-process peer {qps_peer / qps_base:.2f}x bare"))
                rows.append(row("core round trip", f"throughput via single-process peer, {conc} clients (req/s)",
                                qps_peer, qps_base, unit="req/s"))
    finally:
        bare.kill()
        bare.wait()
    from bench.shm_handoff import measure
    h = measure(50 if quick else 200)
    rows.append(row("shm hand-off", "1920x1080x3 frame to a worker, p50 (ms)", h["shm"], h["inline"],
                    goal="shm >= 2x faster than inline", unit="ms",
                    note=f"inline/shm = {h['inline'] / h['shm']:.1f}x"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
