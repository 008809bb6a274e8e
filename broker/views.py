"""What the broker shows of itself: the models every worker reports as loaded and the Stats view (workers,
pools, queues, counters), built from the router's and the process manager's state. Read by the facade's
GetLoadedModels / Stats (through the broker queries of common/wire.py) and by the metrics endpoint."""
from __future__ import annotations

import time

from common import wire as P
from common.cpu_policy import format_cpus


def models_view(router) -> dict:
    out = []
    for ws in router.workers.values():
        if ws.state == "dead":
            continue
        for m in ws.models.values():
            out.append({**m, "pool": ws.pool, "device": ws.device, "worker_id": ws.worker_id})
    return {"models": out}


def stats_view(manager) -> dict:
    router, now = manager.router, time.time()
    workers = []
    for slot in manager.slots:
        ws = slot.worker
        st = ws.status if ws else {}
        mem = st.get("memory") or {}
        workers.append({
            "worker_id": ws.worker_id if ws else f"{slot.key}.restarting",
            "pid": ws.pid if ws else 0, "pool": slot.pool, "device": slot.device,
            "state": ws.state if ws else "restarting", "capacity": ws.capacity if ws else 0,
            "inflight": len(ws.inflight) if ws else 0,
            "queue_depth": len(router.queues.get(slot.pool, ())),
            "restarts": slot.restarts, "uptime_s": (now - ws.started_at) if ws else 0.0,
            "requests_served": ws.served if ws else 0,
            "rss_mb": mem.get("rss_mb", 0.0), "uss_mb": mem.get("uss_mb", 0.0), "pss_mb": mem.get("pss_mb", 0.0),
            "cuda_allocated_mb": mem.get("cuda_allocated_mb", 0.0),
            "cuda_reserved_mb": mem.get("cuda_reserved_mb", 0.0),
            "models": list(ws.models.values()) if ws else [],
            "placement": "ray" if (ws.remote if ws else slot.remote) else "local",
            "node": st.get("node", ""), "node_ip": st.get("node_ip", ""),
            **policy_view(slot.policy),
        })
    pools = []
    for pool, info in router.pools().items():
        for device, live in info["devices"].items():
            pools.append({"pool": pool, "device": device, "live_workers": live,
                          "queue_depth": len(router.queues.get(pool, ())), "queue_limit": router.cfg.queue_limit,
                          "rejected": router.counters["rejected"].get(pool, 0),
                          "expired": router.counters["expired"].get(pool, 0)})
    return {"workers": workers, "pools": pools, "uptime_s": now - manager.started,
            "malformed_frames": router.counters["malformed"], "crashes": manager.counters["crashes"],
            "hangs": manager.counters["hangs"], "stalls": manager.counters["stalls"],
            "callers": {pool: q.callers() for pool, q in router.queues.items()}}


def policy_view(policy) -> dict:
    if policy is None:
        return {}
    return {"cpus": format_cpus(policy.cpus), "nice": policy.nice, "threads": policy.threads, "sched": policy.sched}


def view(name: str, manager) -> dict:
    if name == P.BROKER_QUERY_MODELS:
        return models_view(manager.router)
    if name == P.BROKER_QUERY_STATS:
        return stats_view(manager)
    raise KeyError(name)
