"""Fake worker for tests and benchmarks: echo, sleep, stream N parts, crash, hang, grow memory.

The action is chosen per request (pythonml.v1.Diagnostics/Echo, field `action`). It also implements
ml.ModelManagementService/LoadModel|UnloadModel with bookkeeping only, so that replay of model loads
after a crash can be tested without a real model.
"""
from __future__ import annotations

import os
import signal
import threading
import time

from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X
from workers.base import ECHO_METHOD, ModelRecord, Worker, run_worker_main
from workers.context import RequestContext, WorkerError


class FakeWorker(Worker):
    pool = "fake"
    capacity = 4

    def setup(self) -> None:
        self.capacity = int(os.environ.get("PML_FAKE_CAPACITY") or self.capacity)
        delay = float(os.environ.get("PML_FAKE_SETUP_DELAY_S") or 0)
        if delay:
            time.sleep(delay)

    def handlers(self) -> dict:
        return {ECHO_METHOD: self.echo,
                "ml.ModelManagementService/LoadModel": self.load_model,
                "ml.ModelManagementService/UnloadModel": self.unload_model}

    def echo(self, ctx: RequestContext):
        """The base Echo actions without the fault-injection gate, plus crash, hang, fail and
        stream_thread (partials sent from a helper thread) and seq (the order of a stream's frames)."""
        req = X.EchoRequest.FromString(ctx.payload)
        action = req.action or "echo"
        if action == "stream_thread":
            t = threading.Thread(target=lambda: [ctx.send_partial(self.echo_reply(req, ctx, i)) for i in range(req.parts)])
            t.start()
            t.join()
            return None
        if action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "hang":
            # stop the whole process from this thread's own signal: the thread stops before it returns to
            # Python, so no reply can escape. os.kill(getpid()) is sent to the process, which the kernel
            # hands to the main thread; until that thread runs and stops the others, this one went on and
            # sometimes sent its FINAL first (the "hang" answered OK)
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
            return self.echo_reply(req, ctx)   # only after a SIGCONT
        if action == "fail":
            raise WorkerError("FAILED_PRECONDITION", "fake failure requested")
        if action == "seq":   # a stream's frames in the order they ran: the payload's first byte of each so far
            seen = ctx.stream_state.setdefault("seq", []) if ctx.stream_state is not None else []
            seen.append(req.payload[:1])
            return X.EchoReply(payload=b"".join(seen), worker_id=self.worker_id).SerializeToString()
        return self.echo_action(req, ctx, action)

    def load_model(self, ctx: RequestContext) -> bytes:
        req = ML.LoadModelRequest.FromString(ctx.payload)
        if not req.model_id:
            raise WorkerError("INVALID_ARGUMENT", "model_id is empty")
        if req.model_id.startswith("missing"):
            raise WorkerError("NOT_FOUND", f"model {req.model_id!r} not found")
        self.note_loaded(ModelRecord(req.model_id, req.pipeline_type or "fake", ram_mb=1.0,
                                     load_payload=ctx.payload))
        return ML.LoadModelResponse(success=True, message=f"loaded {req.model_id}",
                                    ram_allocated_mb=1).SerializeToString()

    def unload_model(self, ctx: RequestContext) -> bytes:
        req = ML.UnloadModelRequest.FromString(ctx.payload)
        if req.model_id not in self.models:
            raise WorkerError("NOT_FOUND", f"model {req.model_id!r} is not loaded")
        self.note_unloaded(req.model_id)
        return ML.StatusResponse(success=True, message=f"unloaded {req.model_id}").SerializeToString()


if __name__ == "__main__":
    run_worker_main(FakeWorker)
