"""The single-process peer: one grpc.aio server that answers the service's RPCs with the same models.

    python -m bench.peers.single_process --port P [--services vision,hf,echo] [--threads N]

prints `READY <port>` on stdout once its models are loaded. It is what a competent engineer builds without
the process split (the upstream project's design): one process, one event loop for gRPC, the blocking
model code on thread pools, nothing between the two but an executor hand-off:
- vision: `workers.vision.service.VisionService`, the vision worker's own handler table, on a pool of
  VISION_THREADS threads. Frames stay inside the gRPC message (nothing crosses a process, so no shared
  memory); each stream's state lives as long as the call and its frames run in order, one at a time.
- hf: the hf worker's handlers (generation, chat, embeddings) in this process (`_LocalHF`): the same
  tokenisation, generation slots (4) and dynamic embedding batcher (up to 32 texts per forward pass), on a
  pool of HF_THREADS threads so that 32 concurrent embedding calls wait in the batcher together.
- echo: `pythonml.v1.Diagnostics/Echo` answered by a no-op handler on a pool of ECHO_THREADS threads: the
  peer's own dispatch floor (event loop -> pool thread -> event loop), the counterpart of our
  facade -> broker -> worker round trip.
Requests and responses pass as raw bytes (no deserializer: the handlers parse them, as in our workers).
Library thread budgets: torch and OpenCV each get --threads (default: every CPU), as one process would.
A handler's WorkerError becomes its status code and message; anything else INTERNAL.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import grpc  # noqa: E402

from workers.context import RequestContext, WorkerError  # noqa: E402

VISION_THREADS = 4    # streams and unary calls at once (MediaPipe instances are per stream / pooled)
HF_THREADS = 36       # 32 embedding calls waiting in the batcher + generation slots
ECHO_THREADS = 32     # the fake pool's capacity in bench_core
MAX_MESSAGE = 64 * 2**20
ECHO = "pythonml.v1.Diagnostics/Echo"
_END = object()


def _echo(ctx: RequestContext) -> bytes:
    from protos import pythonml_pb2 as X
    req = X.EchoRequest.FromString(ctx.payload)
    return X.EchoReply(payload=req.payload, pid=os.getpid()).SerializeToString()


def _vision(threads: int) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import cv2
    cv2.setNumThreads(threads)
    from workers.vision.service import VisionService
    svc = VisionService({"threads": threads}, pool_size=2)
    svc.warm()
    return svc.handlers()


def _hf(threads: int) -> dict:
    from workers.base import worker_arg_parser
    from workers.hf_worker import HFWorker

    class _LocalHF(HFWorker):
        """The hf worker's handlers without a broker: model bookkeeping messages go nowhere."""

        def _send(self, command: bytes, header: dict, frames=()) -> None:
            pass

    args = worker_arg_parser("hf").parse_args(["--connect", "inproc://none", "--worker-id", "peer-hf",
                                               "--options-json", json.dumps({"threads": threads})])
    worker = _LocalHF(args)
    worker.setup()
    return worker.handlers()


class Dispatcher:
    """Runs one handler table's blocking handlers on `executor`, for every gRPC call shape."""

    def __init__(self, handlers: dict, executor: ThreadPoolExecutor):
        self.handlers = handlers
        self.executor = executor

    @staticmethod
    def _context(method: str, payload: bytes, context, send: Optional[Callable] = None,
                 state: Optional[dict] = None, stream: Optional[str] = None, **extra) -> RequestContext:
        left = context.time_remaining()
        header = {"deadline": time.time() + left if left is not None else None, "stream": stream, **extra}
        return RequestContext(request_id=uuid.uuid4().hex, method=method, payload=payload, header=header,
                              stream_state=state, _send_partial=send)

    @staticmethod
    async def _abort(context, exc: BaseException, method: str):
        if isinstance(exc, WorkerError):
            await context.abort(grpc.StatusCode[exc.code], exc.message)
        await context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {type(exc).__name__}: {exc}")

    async def _run(self, method: str, ctx: RequestContext, context, running: Optional[list] = None):
        """The handler's answer; `running` (a stream's) keeps the last job so its state closes after it."""
        job = self.executor.submit(self.handlers[method], ctx)
        if running is not None:
            running[:] = [job]
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            ctx.cancelled.set()   # the handler stops at its next check
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            await self._abort(context, exc, method)

    def unary(self, method: str):
        async def call(request: bytes, context) -> bytes:
            return await self._run(method, self._context(method, request, context), context) or b""
        return call

    def server_stream(self, method: str):
        async def call(request: bytes, context):
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731
            ctx = self._context(method, request, context, send=lambda b: put(("partial", b)))

            def job():
                try:
                    put(("final", self.handlers[method](ctx)))
                except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                    put(("error", exc))
            fut = loop.run_in_executor(self.executor, job)
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "partial":
                        yield value
                    elif kind == "final":
                        if value:
                            yield value
                        return
                    else:
                        await self._abort(context, value, method)
            finally:
                if not fut.done():
                    ctx.cancelled.set()

        return call

    def bidi(self, method: str):
        async def call(request_iterator, context):
            state: dict = {}
            stream = uuid.uuid4().hex
            partials: list = []
            running: list = []
            try:
                async for request in request_iterator:
                    ctx = self._context(method, request, context, send=partials.append, state=state, stream=stream)
                    out = await self._run(method, ctx, context, running)
                    while partials:
                        yield partials.pop(0)
                    if out:
                        yield out
            finally:
                self._close_after(running, state)

        return call

    def client_stream(self, method: str):
        async def call(request_iterator, context) -> bytes:
            state: dict = {}
            stream = uuid.uuid4().hex
            running: list = []
            try:
                async for request in request_iterator:
                    await self._run(method, self._context(method, request, context, state=state, stream=stream,
                                                          end=False), context, running)
                return await self._run(method, self._context(method, b"", context, state=state, stream=stream,
                                                             end=True), context, running) or b""
            finally:
                self._close_after(running, state)

        return call

    def _close_after(self, running: list, state: dict) -> None:
        """Close a finished stream's state on a pool thread, once its last frame's job has stopped."""
        if running:
            running[0].add_done_callback(lambda _job: self.executor.submit(_close_state, state))
        else:
            self.executor.submit(_close_state, state)

    def generic_handlers(self) -> list:
        """One grpc generic handler per service in the table, each method with its proto's call shape."""
        shapes = _call_shapes()
        services: dict = {}
        for method in self.handlers:
            service, name = method.split("/", 1)
            client_streaming, server_streaming = shapes[method]
            if client_streaming and server_streaming:
                h = grpc.stream_stream_rpc_method_handler(self.bidi(method))
            elif client_streaming:
                h = grpc.stream_unary_rpc_method_handler(self.client_stream(method))
            elif server_streaming:
                h = grpc.unary_stream_rpc_method_handler(self.server_stream(method))
            else:
                h = grpc.unary_unary_rpc_method_handler(self.unary(method))
            services.setdefault(service, {})[name] = h
        return [grpc.method_handlers_generic_handler(s, m) for s, m in services.items()]


def _close_state(state: dict) -> None:
    for value in list(state.values()):
        close = getattr(value, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing a finished stream's models
                pass
    state.clear()


def _call_shapes() -> dict:
    """method path -> (client_streaming, server_streaming), from the protos."""
    from protos import ml_inference_pb2, pythonml_pb2
    out = {}
    for mod in (ml_inference_pb2, pythonml_pb2):
        for service in mod.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out[f"{service.full_name}/{m.name}"] = (m.client_streaming, m.server_streaming)
    return out


async def serve(port: int, services: list[str], threads: int) -> None:
    tables = {"vision": (lambda: _vision(threads), VISION_THREADS), "hf": (lambda: _hf(threads), HF_THREADS),
              "echo": (lambda: {ECHO: _echo}, ECHO_THREADS)}
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE)])
    for name in services:
        build, workers = tables[name]
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"peer-{name}")
        server.add_generic_rpc_handlers(Dispatcher(build(), executor).generic_handlers())
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"READY {bound}", flush=True)
    await server.wait_for_termination()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--services", default="vision,hf,echo", help="comma list of vision, hf, echo")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch / OpenCV threads")
    a = ap.parse_args(argv)
    services = [s for s in a.services.split(",") if s]
    unknown = set(services) - {"vision", "hf", "echo"}
    if unknown:
        ap.error(f"unknown services {sorted(unknown)}: use vision, hf, echo")
    asyncio.run(serve(a.port, services, a.threads))


if __name__ == "__main__":
    main()
