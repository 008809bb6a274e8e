"""--pools: which workers run, where, how many, and with which CPU policy.

`pool[@device][*count][[settings]]`, comma separated: e.g. `vision,hf,litert` (the default),
`hf@cuda:0*2`, `vision[cpus=0],hf[cpus=1;nice=5;threads=1;sched=normal]` (common/cpu_policy.py), `hf[ray;num_cpus=2]`
(placed on a Ray cluster: broker/ray_placement.py). With `--cuda auto` and no explicit CUDA device, a family
that runs per CUDA device (hf) gets one more (local) worker on each.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from broker.ray_placement import RayPlacement, take_placement
from common.cpu_policy import CpuPolicy, policy_for
from common.families import family_of


@dataclass(frozen=True)
class PoolSpec:
    pool: str
    device: str
    count: int
    policy: CpuPolicy
    placement: Optional[RayPlacement] = None      # None: local processes; else worker actors on a Ray cluster


def detect_cuda_devices() -> list:
    """Count NVIDIA GPUs without importing torch (start-up stays light)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []
    try:
        gpus = os.listdir("/proc/driver/nvidia/gpus")
    except OSError:
        return []
    n = len(gpus)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return [f"cuda:{i}" for i in range(n)]


def _items(spec: str) -> list:
    """Split on the commas that are not inside [...]."""
    out, depth, cur = [], 0, ""
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("']' without '['")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError("'[' without ']'")
    out.append(cur)
    return [s.strip() for s in out if s.strip()]


def _settings(body: str) -> dict:
    """'cpus=0,1;nice=5' or 'cpus=0-1,nice=5' -> {'cpus': '0,1', 'nice': '5'} (a piece without '=' continues the
    value before it, so core lists may use commas)."""
    out: dict = {}
    key = None
    for tok in [t.strip() for t in re.split(r"[;,]", body) if t.strip()]:
        if tok == "ray":          # a bare word: place the pool on the Ray cluster
            out["ray"], key = "", None
        elif "=" in tok:
            key, _, value = tok.partition("=")
            key = key.strip()
            out[key] = value.strip()
        elif key is None:
            raise ValueError(f"setting {tok!r} has no '=' (e.g. cpus=0)")
        else:
            out[key] += "," + tok
    return out


ITEM = re.compile(r"^(?P<pool>[A-Za-z0-9_-]+)(@(?P<device>[A-Za-z0-9_:.-]+))?(\*(?P<count>\d+))?(\[(?P<settings>[^\]]*)\])?$")


def parse_pool_specs(spec: str, cuda: str = "auto", cpu_policy: bool = True, worker_threads: int = 0) -> list:
    """The --pools flag -> [PoolSpec]; ValueError with what is wrong (run.py refuses to start)."""
    out, parsed = [], []
    for item in _items(spec):
        m = ITEM.match(item)
        if not m:
            raise ValueError(f"{item!r} is not pool[@device][*count][[settings]]")
        family = family_of(m["pool"])   # an unknown pool is refused here, before anything starts
        count = int(m["count"] or 1)
        if count < 1:
            raise ValueError(f"{item!r}: the count must be at least 1")
        settings = _settings(m["settings"] or "")
        try:
            placement = take_placement(settings, m["device"] or "cpu")
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
        parsed.append((m, family, count, settings, placement))
    # thread budgets add up to THIS machine: Ray-placed pools run elsewhere and do not count
    beside_latency = any(family.latency for _, family, _, _, placement in parsed if placement is None)
    # a GPU worker's CPU side only feeds its device: it neither splits the cores nor idles (SCHED_IDLE would
    # starve its kernel launches whenever a frame is served)
    beside_throughput = any(not family.latency and not _on_gpu(m) for m, family, _, _, placement in parsed
                            if placement is None)
    for m, family, count, settings, placement in parsed:
        if placement is not None and "threads" not in settings:
            settings["threads"] = str(placement.threads)
        # both kinds run here: they split this machine's cores (a Ray-placed pool's cores are its node's)
        split = placement is None and beside_latency and beside_throughput and not _on_gpu(m)
        policy = policy_for(family.latency, settings, cpu_policy, worker_threads, beside_latency, split)
        out.append(PoolSpec(m["pool"], m["device"] or "cpu", count, policy, placement))
    if cuda == "auto" and not any(s.device.startswith("cuda") for s in out):
        # one more worker per device, with the pool's settings and the policy of a GPU pool (no core split)
        wanted = {m["pool"]: (family, settings) for m, family, _, settings, placement in parsed
                  if family.per_cuda_device and placement is None}
        out += [PoolSpec(pool, dev, 1, policy_for(family.latency, settings, cpu_policy, worker_threads,
                                                  beside_latency))
                for pool, (family, settings) in wanted.items() for dev in detect_cuda_devices()]
    return out


def _on_gpu(m) -> bool:
    return (m["device"] or "cpu").startswith("cuda")
