"""Where a Ray-placed pool runs: the resources its worker actors ask the Ray cluster for.

A pool is placed on Ray by its `--pools` settings: `hf[ray]`, `hf@cuda:0[ray;num_gpus=1;memory_mb=8000]`,
`vision[ray;num_cpus=2;resources=camera_host:1;label=zone:b]`. Ray places each worker as an actor on a node
whose resources fit (CPUs, GPUs, memory, custom resources, node labels); the actor runs the ordinary
worker process (broker/ray_host.py), which joins the broker over tcp with CurveZMQ. Pools without `ray`
stay local processes. Parsing only: nothing here imports Ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

RAY_KEYS = ("ray", "num_cpus", "num_gpus", "memory_mb", "resources", "label")


@dataclass(frozen=True)
class RayPlacement:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int = 0                                  # 0: no memory reservation
    resources: tuple = ()                               # ((name, amount), ...): custom node resources
    labels: tuple = ()                                  # ((key, value), ...): node labels required

    def actor_options(self) -> dict:
        """`ActorClass.options(**...)` for one worker actor (Ray never restarts it: the process manager
        re-places a lost worker itself, with back-off and its loads replayed)."""
        out: dict = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_restarts": 0,
                     "max_task_retries": 0}
        if self.memory_mb:
            out["memory"] = int(self.memory_mb) * 2**20
        if self.resources:
            out["resources"] = dict(self.resources)
        if self.labels:
            out["label_selector"] = dict(self.labels)
        return out

    def describe(self) -> str:
        parts = [f"num_cpus={self.num_cpus:g}"]
        if self.num_gpus:
            parts.append(f"num_gpus={self.num_gpus:g}")
        if self.memory_mb:
            parts.append(f"memory_mb={self.memory_mb}")
        parts += [f"{k}:{v:g}" for k, v in self.resources] + [f"label {k}={v}" for k, v in self.labels]
        return ", ".join(parts)

    @property
    def threads(self) -> int:
        """The worker's thread budget on its node: the CPUs it reserved (at least 1)."""
        return max(1, math.floor(self.num_cpus))


def _number(key: str, text: str, minimum: float = 0.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{key}={text!r} must be a number >= {minimum:g}")
    return value


def _pairs(key: str, text: str, numeric: bool) -> tuple:
    """'a:1+b:0.5' -> (('a', 1.0), ('b', 0.5)); labels keep their values as text."""
    out = []
    for item in [p for p in text.split("+") if p]:
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"{key}={text!r}: each entry is NAME:{'AMOUNT' if numeric else 'VALUE'}, joined by '+'")
        out.append((name, _number(f"{key} {name}", value) if numeric else value))
    return tuple(out)


def take_placement(settings: dict, device: str) -> Optional[RayPlacement]:
    """Remove the Ray settings from a pool's `settings` and return its placement (None: a local pool).
    ValueError names what is wrong (run.py refuses to start)."""
    ray_keys = {k: settings.pop(k) for k in RAY_KEYS if k in settings}
    if not ray_keys:
        return None
    if "ray" not in ray_keys:
        raise ValueError(f"{', '.join(sorted(ray_keys))} only apply to a Ray-placed pool: add 'ray' to its settings "
                         f"(e.g. hf[ray;num_cpus=2])")
    if ray_keys["ray"] not in ("", "1", "true", "yes"):
        raise ValueError(f"ray={ray_keys['ray']!r}: write the bare word 'ray' to place a pool on the Ray cluster")
    if "cpus" in settings:
        raise ValueError("cpus= pins cores of this machine; a Ray-placed worker runs on the node Ray picks: "
                         "reserve CPUs there with num_cpus=")
    gpus_default = 1.0 if device.startswith("cuda") else 0.0
    for key in ("num_cpus", "num_gpus"):
        value = _number(key, ray_keys.get(key, "1" if key == "num_cpus" else str(gpus_default)))
        if value > 1 and not value.is_integer():
            raise ValueError(f"{key}={value:g}: Ray takes a fraction only below 1 (e.g. 0.5), whole numbers above")
    return RayPlacement(
        num_cpus=_number("num_cpus", ray_keys.get("num_cpus", "1")),
        num_gpus=_number("num_gpus", ray_keys.get("num_gpus", str(gpus_default))),
        memory_mb=int(_number("memory_mb", ray_keys.get("memory_mb", "0"))),
        resources=_pairs("resources", ray_keys.get("resources", ""), numeric=True),
        labels=_pairs("label", ray_keys.get("label", ""), numeric=False))
