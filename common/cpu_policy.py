"""CPU policy per pool: which cores a worker may run on, its scheduling priority, and its thread budget.

Only separate processes make this possible: the operating system is told which process waits on a
camera. Latency families (vision, litert: a frame or a tensor waits for each answer) run at normal
priority; throughput families (hf: generation, embeddings, speech) run at a lower one (nice 10), so when
both want the CPU a vision frame is served first while an LLM still makes progress (CFS shares by weight:
nice 0 vs nice 10 is about 10:1 under contention, and an idle core is never withheld). The thread budget
is what every library of the worker uses (torch, XNNPACK/LiteRT, OpenCV, CTranslate2, ONNX): by default
half of the cores for a latency pool and the other half for a throughput pool beside it (all of them for a
throughput pool alone), so the budgets add up to the machine instead of each library taking every core.
Measured on 2 cores (bench_isolation turns): hf with 2 threads beside vision gave pose p99 under an LLM
1.13-1.20x alone and LLM tokens/s while pose streams 0.45-0.74x; with 1 thread 1.09x and 0.64x, and the LLM
alone was no slower (25.5 vs 23.9 tokens/s): two torch threads on two busy cores mostly wait for each other.

Overrides per pool, in --pools: `vision[cpus=0],hf[cpus=1;nice=5;threads=1]` (cpus: a list such as
`0-3;6` or `0,1` inside the brackets; nice: 0..19, only lowering priority is possible without privileges;
threads: >= 1). `--cpu-policy off` leaves every worker at the service's own priority and cores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

THROUGHPUT_NICE = 10


@dataclass(frozen=True)
class CpuPolicy:
    cpus: Optional[tuple] = None     # cores the worker may run on (None: every core the service has)
    nice: int = 0                    # added to the service's niceness (lower priority), 0..19
    threads: int = 1                 # thread budget of every library in the worker

    def env(self) -> dict:
        """Environment read by the child bootstrap (common/child.py) before anything heavy is imported."""
        out = {"PML_NICE": str(self.nice)}
        if self.cpus is not None:
            out["PML_CPUS"] = ",".join(str(c) for c in self.cpus)
        return out


def available_cpus() -> tuple:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))


def parse_cpus(text: str) -> tuple:
    """'0-3;6' or '0,1' or '2' -> (0, 1, 2, 3, 6); every core must be one this service may use."""
    have = set(available_cpus())
    out: set = set()
    for part in [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]:
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ValueError(f"cpus={text!r}: {part!r} is not a core number or range") from None
        if first > last:
            raise ValueError(f"cpus={text!r}: range {part!r} runs backwards")
        out.update(range(first, last + 1))
    if not out:
        raise ValueError(f"cpus={text!r} names no core")
    missing = sorted(out - have)
    if missing:
        raise ValueError(f"cpus={text!r}: core(s) {missing} are not available to this service "
                         f"(available: {format_cpus(tuple(sorted(have)))})")
    return tuple(sorted(out))


def format_cpus(cpus: Optional[tuple]) -> str:
    if cpus is None:
        return "all"
    runs, start, prev = [], None, None
    for c in cpus:
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            runs.append((start, prev))
            start = prev = c
    if start is not None:
        runs.append((start, prev))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def policy_for(latency: bool, overrides: dict, enabled: bool = True, threads_flag: int = 0,
               beside_latency: bool = False) -> CpuPolicy:
    """The policy of one pool: automatic from its kind and the cores, then its overrides.
    `threads_flag` is --worker-threads (0 = automatic). `beside_latency`: the service also runs a latency
    pool, so a throughput pool's threads leave it its half of the cores (the budgets add up to the machine)."""
    unknown = set(overrides) - {"cpus", "nice", "threads"}
    if unknown:
        raise ValueError(f"unknown pool setting(s) {sorted(unknown)}; known: cpus, nice, threads")
    cpus = parse_cpus(overrides["cpus"]) if "cpus" in overrides else None
    ncores = len(cpus) if cpus is not None else len(available_cpus())
    nice = 0 if (latency or not enabled) else THROUGHPUT_NICE
    if "nice" in overrides:
        try:
            nice = int(overrides["nice"])
        except ValueError:
            raise ValueError(f"nice={overrides['nice']!r} is not a number") from None
        if not 0 <= nice <= 19:
            raise ValueError(f"nice={nice} is outside 0..19 (only lowering a worker's priority is possible)")
    if latency:
        auto = max(1, ncores // 2)
    else:
        auto = max(1, ncores - ncores // 2) if beside_latency else ncores
    threads = threads_flag or auto
    if "threads" in overrides:
        try:
            threads = int(overrides["threads"])
        except ValueError:
            raise ValueError(f"threads={overrides['threads']!r} is not a number") from None
        if threads < 1:
            raise ValueError("threads must be at least 1")
    return CpuPolicy(cpus=cpus, nice=nice, threads=threads)


def apply_from_env(environ=os.environ) -> None:
    """In the child, before heavy imports: take the cores and the priority the policy gave it."""
    cpus = environ.get("PML_CPUS")
    if cpus:
        try:
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        except (OSError, ValueError):
            pass
    nice = int(environ.get("PML_NICE") or 0)
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass
