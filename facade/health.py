"""grpc.health.v1 statuses derived from live worker state, per service."""
from __future__ import annotations

from grpc_health.v1 import health, health_pb2

from facade.routes import SERVICE_POOLS

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthTracker:
    def __init__(self, configured_pools: set, always_serving: tuple):
        self.servicer = health.aio.HealthServicer()
        self.configured = configured_pools
        self.always = always_serving
        self.current: dict = {}

    async def start(self) -> None:
        for svc in self.always:
            await self._set(svc, SERVING)
        await self.update({})

    async def _set(self, service: str, status) -> None:
        if self.current.get(service) != status:
            self.current[service] = status
            await self.servicer.set(service, status)

    async def update(self, pools: dict) -> None:
        def live(pool: str) -> bool:
            return (pools.get(pool) or {}).get("live", 0) > 0
        for service, wanted in SERVICE_POOLS.items():
            ok = any(live(p) for p in wanted if p in self.configured)
            await self._set(service, SERVING if ok else NOT_SERVING)
        overall = bool(self.configured) and all(live(p) for p in self.configured)
        await self._set("", SERVING if overall else NOT_SERVING)
