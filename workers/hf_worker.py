"""HuggingFace worker: text generation, chat, embeddings, speech, pipelines and model management on one device.

Started by run.py as ``python -m workers.hf_worker --pool hf --device cpu ...`` (one per device). The
handlers live in workers/hf/service.py (one module per handler group under workers/hf/handlers/); this
module connects them to the worker base: offline mode, thread budget, warm-up before READY, the
worker's registry of loaded models and the broker notifications of loads, unloads and recycling.

HF offline mode is forced before transformers is imported: nothing here ever reaches a hub.
Worker options: see workers/hf/service.py, plus hf_capacity (default 32: concurrent requests; embeddings
batch across them, generation has its own limit) and threads (torch intra-op threads).
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from workers.base import Worker, run_worker_main  # noqa: E402 - after the offline switches


class HFWorker(Worker):
    pool = "hf"
    capacity = 32   # embeddings batch across concurrent requests; generation has its own limit

    def setup(self) -> None:
        import torch
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        threads = int(self.options.get("threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass
        self.capacity = int(self.options.get("hf_capacity") or self.capacity)
        from workers.hf.service import HFService
        self.service = HFService(self.options, device=self.device, log=self.log, models=self.models,
                                 request_recycle=self.request_recycle)
        self.service.warm()

    def handlers(self) -> dict:
        return self.service.handlers()


if __name__ == "__main__":
    run_worker_main(HFWorker)
