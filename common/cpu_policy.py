"""CPU policy per pool: which cores a worker may run on, its scheduling class and priority, and its thread budget.

Only separate processes make this possible: the operating system is told which process waits on a
camera. Latency families (vision, litert: a frame or a tensor waits for each answer) run at normal
priority; throughput families (hf: generation, embeddings, speech) run at a lower one (nice 10). The thread
budget is what every library of the worker uses (torch, XNNPACK/LiteRT, OpenCV, CTranslate2, ONNX): by
default half of the cores for a latency pool and the other half for a throughput pool beside it (all of
them for a throughput pool alone), so the budgets add up to the machine instead of each library taking
every core.

When the service runs both kinds here and has at least 2 cores, the automatic policy also splits the cores
along the same line: latency pools are pinned to the first half, throughput pools to the other half and put in
SCHED_IDLE (they run only when nothing else wants their cores; their nice stays set). Why (bench_isolation on
2 cores, pose with 3 frames in flight while a 1-thread SmolLM2 streams, /proc/<pid>/schedstat per frame): with
nice 10 and no pinning the vision worker's CPU time per frame rose 13.0-13.3 -> 13.8-13.9 ms and its run-queue
wait 0.5 -> 2.0-2.5 ms, pose fps fell to 0.82-0.89x alone: under EEVDF a waking nice-0 thread still waits for
the niced LLM's slice, and the facade, broker and client threads that carry the 900 KB frames land on the
vision worker's core or wait behind the LLM. Nice 19 alone (0.83-0.89x) or pinning alone (0.90x) did not help;
pinning plus SCHED_IDLE did: bench_isolation --before, 5 turns in one run, pose fps 0.90-0.99x (median 0.93;
the old policy 0.80-0.88x, median 0.86), p99 1.07x (old 1.12x), LLM tokens/s while pose streams 0.79x (old
0.83x); a second such run 0.94x (old 0.89x), 1.02x (1.12x), 0.80x (0.84x): a core that runs only a SCHED_IDLE
task counts as idle when the kernel places a waking thread, and any normal thread preempts it at once, so the
frame-carrying processes take the throughput core whenever they need it, and the vision worker keeps its core
(and its L2) to itself. The facade keeps to those cores while a latency pool is served (facade_cpus,
facade/cores.py): left free, it still took 2.5-5% of the vision core (pose fps 0.945x -> 0.986x); the broker
and the clients are not ours to pin and did not show on it. The LLM's own core cannot be taken by the latency
pool, so it is never starved by it (only by the facade and broker's own work). On one core nothing is split or
idled (SCHED_IDLE would starve the LLM under a steady stream). A pool on a CUDA device takes no part in the
split and never idles (broker/pool_specs.py): its CPU side only feeds the GPU, and SCHED_IDLE would delay its
kernel launches whenever a frame is served. With vision idle, the split costs hf nothing measurable
(vision,hf, 4 turns: embeddings 32 clients 224 vs 217 sentences/s without the split, SmolLM2 24.5 vs 25.2
tokens/s).

Overrides per pool, in --pools: `vision[cpus=0],hf[cpus=1;nice=5;threads=1;sched=normal]` (cpus: a list such
as `0-3;6` or `0,1` inside the brackets, replacing the automatic half; nice: 0..19, only lowering priority is
possible without privileges; threads: >= 1; sched: idle or normal). `--cpu-policy off` leaves every worker
at the service's own priority, class and cores.
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
    idle: bool = False               # SCHED_IDLE: runs only on cores nothing else wants

    @property
    def sched(self) -> str:
        return "idle" if self.idle else "normal"

    def env(self) -> dict:
        """Environment read by the child bootstrap (common/child.py) before anything heavy is imported."""
        out = {"PML_NICE": str(self.nice)}
        if self.idle:
            out["PML_SCHED"] = "idle"
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


def split_cores(cpus: tuple) -> Optional[tuple]:
    """(latency cores, throughput cores): the first half (at least one) and the rest; None under 2 cores."""
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return tuple(cpus[:half]), tuple(cpus[half:])


def policy_for(latency: bool, overrides: dict, enabled: bool = True, threads_flag: int = 0,
               beside_latency: bool = False, split: bool = False) -> CpuPolicy:
    """The policy of one pool: automatic from its kind and the cores, then its overrides.
    `threads_flag` is --worker-threads (0 = automatic). `beside_latency`: the service also runs a latency
    pool, so a throughput pool's threads leave it its half of the cores (the budgets add up to the machine).
    `split`: latency and throughput pools both run on this machine, so (with >= 2 cores) this pool is pinned
    to its kind's half of the cores, and a throughput pool put in SCHED_IDLE (module docstring)."""
    unknown = set(overrides) - {"cpus", "nice", "threads", "sched"}
    if unknown:
        raise ValueError(f"unknown pool setting(s) {sorted(unknown)}; known: cpus, nice, threads, sched")
    have = available_cpus()
    halves = split_cores(have) if enabled and split else None
    if "cpus" in overrides:
        cpus = parse_cpus(overrides["cpus"])
    else:
        cpus = None if halves is None else halves[0 if latency else 1]
    ncores = len(cpus) if "cpus" in overrides else len(have)
    nice = 0 if (latency or not enabled) else THROUGHPUT_NICE
    idle = halves is not None and not latency
    if "nice" in overrides:
        try:
            nice = int(overrides["nice"])
        except ValueError:
            raise ValueError(f"nice={overrides['nice']!r} is not a number") from None
        if not 0 <= nice <= 19:
            raise ValueError(f"nice={nice} is outside 0..19 (only lowering a worker's priority is possible)")
    if "sched" in overrides:
        if overrides["sched"] not in ("idle", "normal"):
            raise ValueError(f"sched={overrides['sched']!r}: idle or normal")
        idle = overrides["sched"] == "idle"
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
    return CpuPolicy(cpus=cpus, nice=nice, threads=threads, idle=idle)


def facade_cpus(policies) -> Optional[tuple]:
    """The cores the facade (the gRPC process that carries every frame and token) keeps to while a latency
    pool is served (facade/cores.py): those of the pools in SCHED_IDLE, less any core a normal pool is pinned
    to; None (every core, always) when no pool idles.
    There any of its threads preempts the idle pool at once, and it stays off the latency pool's core: left
    free, a facade thread woken by the vision worker's reply was placed on the vision worker's core (the
    kernel prefers the waker's core when the other one is busy, even with only a SCHED_IDLE task) and took
    2.5-5% of it while an LLM streamed (perf sched on core 0, 3 s: 0.3% alone). bench_isolation's pose with
    an LLM, 4 turns each against two services in one run: fps 0.945x alone -> 0.986x, p99 1.04x -> 1.01x,
    LLM tokens/s under pose unchanged (0.755x both). Kept there for good, the facade also lost the latency
    pool's core while no frame flowed (vision,hf, 32 embeddings clients, 6 turns: 195 sentences/s against
    204 when it widens again after the latency traffic stops)."""
    idle = {c for p in policies if p.idle and p.cpus for c in p.cpus}
    busy = {c for p in policies if not p.idle and p.cpus for c in p.cpus}
    cores = tuple(sorted(idle - busy))
    return cores if cores and cores != available_cpus() else None


def apply_from_env(environ=os.environ) -> None:
    """In the child, before heavy imports (one thread yet: the threads it starts inherit all of this): take the
    cores, the priority and the scheduling class the policy gave it."""
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
    if environ.get("PML_SCHED") == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            pass
