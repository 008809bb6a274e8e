"""The pool registry: every worker family in one table, read by run.py, the process manager, the facade's
routes, health and KServe. Adding a family is one entry here plus its worker module and handlers.

A family is a kind of worker process (its module, the gRPC services it serves); a pool is the set of
workers of one family on one device. Pools are named after their family (any pool named fake* runs the
fake worker of the tests). No heavy imports: the facade, the broker and the client read this.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from common import methods as M


@dataclass(frozen=True)
class Family:
    name: str                 # the pool name requests carry
    module: str               # the worker module run as `python -m common.child SIG MODULE ...`
    services: tuple = ()      # gRPC services whose requests it serves (health and routing read it)
    default: bool = True      # started when --pools is not given
    per_cuda_device: bool = False   # --cuda auto adds one worker of this family per CUDA device
    latency: bool = True      # a caller waits on each answer (frames): normal priority (common/cpu_policy.py)
    # LoadModel placement (common/placement.py): the pipeline types and model-file kinds
    # (common/model_resolver.py family_of_file) this family loads; `loads_the_rest` takes all others
    load_pipelines: frozenset = frozenset()
    load_file_kinds: frozenset = frozenset()
    loads_the_rest: bool = False


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("vision", "workers.vision_worker", (M.MEDIAPIPE,)),
    Family("hf", "workers.hf_worker", (M.TRANSFORMERS, M.MANAGEMENT, M.SPEECH, M.PIPELINES), per_cuda_device=True,
           latency=False, loads_the_rest=True),
    Family("litert", "workers.litert_worker", (M.MANAGEMENT, M.KSERVE),
           load_pipelines=frozenset({"tflite", "litert", "tensor", "kserve"}), load_file_kinds=frozenset({"litert"})),
    Family("fake", "workers.fake_worker", default=False),
)}

# services every family answers (health of these follows any live pool)
EVERY_FAMILY = (M.DIAGNOSTICS,)


def family_of(pool: str) -> Family:
    """The family of a pool name; any pool named fake* is the fake family (tests)."""
    if pool.startswith("fake"):
        return FAMILIES["fake"]
    try:
        return FAMILIES[pool]
    except KeyError:
        raise ValueError(f"unknown pool {pool!r}; known: {', '.join(FAMILIES)}") from None


def default_pools() -> str:
    return ",".join(name for name, f in FAMILIES.items() if f.default)


@lru_cache(maxsize=None)
def pool_serving(service: str) -> str:
    """The one pool of the requests of a gRPC service (ModelManagement is placed per model: common/placement.py)."""
    pools = [f.name for f in FAMILIES.values() if service in f.services]
    if len(pools) != 1:
        raise KeyError(f"{service} is served by {pools or 'no pool'}; place it per request")
    return pools[0]


def service_pools() -> dict:
    """gRPC service -> the pools whose liveness decides its health status."""
    out: dict = {}
    for f in FAMILIES.values():
        for s in f.services:
            out.setdefault(s, ())
            out[s] += (f.name,)
    for s in EVERY_FAMILY:
        out[s] = tuple(FAMILIES)
    return out
