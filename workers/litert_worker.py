"""LiteRT worker: .tflite models through the KServe v2 tensor API and ml.ModelManagementService.

Started by run.py as ``python -m workers.litert_worker --pool litert --device cpu ...``. The handlers
live in workers/litert/service.py; this module connects them to the worker base (its one
registry of loaded models, whose records carry the service's ModelInstance as runtime; memory
measurement; thread budget).
"""
from __future__ import annotations

import os

from workers.base import Worker, run_worker_main
from workers.litert.service import LiteRTService


class LiteRTWorker(Worker):
    pool = "litert"
    capacity = 4   # concurrent requests; calls to one model are serialised by that model's lock

    def setup(self) -> None:
        self.capacity = int(self.options.get("capacity") or self.capacity)
        threads = int(self.options.get("threads") or 0)
        if threads > 0:  # numpy/BLAS helpers stay inside the budget too
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import ai_edge_litert.interpreter  # noqa: F401 - heavy import before READY, not on the first request
        self.service = LiteRTService(self.options, device=self.device, log=self.log,
                                     measure_memory=self.measure_memory, models=self.models)
        for model_id in self.options.get("preload") or []:
            try:
                self.service._load(model_id, {}, None, b"")
            except Exception as exc:  # a bad preload must not keep the pool down
                self.log.error("preload of %s failed: %s", model_id, exc)

    def handlers(self) -> dict:
        return self.service.handlers()


if __name__ == "__main__":
    run_worker_main(LiteRTWorker)
