"""Shared helpers for benchmarks: the project root on sys.path, offline Hugging Face libraries, percentiles,
row building, concurrent async load."""
from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Awaitable, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def offline() -> None:
    """Hugging Face libraries in this process never reach a hub (call before they are imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def pct(values, q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(q / 100.0 * (len(v) - 1)))))
    return v[k]


def row(bench: str, metric: str, value: float, baseline: float, goal: str = "", unit: str = "", note: str = "",
        ratio: float | None = None) -> dict:
    if ratio is None:
        ratio = (value / baseline) if baseline else float("nan")
    return {"bench": bench, "metric": metric, "value": value, "baseline": baseline, "ratio": ratio,
            "goal": goal, "unit": unit, "note": note}


async def run_concurrent(call: Callable[[], Awaitable[None]], concurrency: int, total: int) -> list:
    """Run `total` calls with `concurrency` in flight; returns per-call latencies in ms."""
    latencies: list = []
    counter = {"left": total}

    async def worker():
        while counter["left"] > 0:
            counter["left"] -= 1
            t0 = time.perf_counter()
            await call()
            latencies.append(1000 * (time.perf_counter() - t0))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies
