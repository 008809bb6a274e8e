"""The facade process: grpc.aio server on --host:--port, one DEALER to the broker.

Never runs a model and never blocks its event loop. Started by run.py; announces the bound port to
the broker (HELLO), which lets run.py print the READY line. Imports neither torch nor mediapipe.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common import logs, proc
from common.tls import TlsFiles, grpc_server_credentials, server_ssl_context
from facade.auth import TokenInterceptor
from facade.caller import CallerInterceptor
from facade import cores, event_loop
from facade.broker_client import BrokerClient
from facade.budget import DEFAULT_BUFFER_MB, ByteBudget
from facade.parse_errors import DecodeErrorInterceptor
from facade.health import HealthTracker
from facade.own_methods import Diagnostics, ModelManagement, Stats
from facade.passthrough import PassThrough
from facade.routes import ROUTES
from facade.response_limit import DEFAULT_MAX_RESPONSE_MB, ResponseLimitInterceptor
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X
from shm.pool import SlotAllocator

log = logging.getLogger("facade")

MAX_STREAMS_PER_CONNECTION = 1024
READ_AHEAD_BYTES = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="PythonML gRPC facade (started by run.py)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50051)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--pools", default="")
    ap.add_argument("--shm-fd", type=int, default=-1)
    ap.add_argument("--shm-slots", type=int, default=0)
    ap.add_argument("--shm-slot-size", type=int, default=0)
    ap.add_argument("--token-env", default="PYTHONML_TOKEN")
    ap.add_argument("--max-message-mb", type=int, default=64)
    ap.add_argument("--max-response-mb", type=float, default=DEFAULT_MAX_RESPONSE_MB,
                    help="largest message sent to a client (facade/response_limit.py)")
    ap.add_argument("--buffer-mb", type=int, default=DEFAULT_BUFFER_MB,
                    help="request bytes the facade holds at once before it stops reading streams")
    ap.add_argument("--grace-s", type=float, default=10.0)
    ap.add_argument("--model-dirs", default="")
    ap.add_argument("--cwd-models", default="1", help="1: the working directory's models/ is a model folder")
    ap.add_argument("--http-port", type=int, default=0,
                    help="OpenAI-compatible HTTP API port on --host (facade/openai_http.py); 0 = off")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--tls-client-ca", default="")
    ap.add_argument("--latency-cpus", default="",
                    help="cores to keep to while a latency pool is served (facade/cores.py); '' = every core")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-format", default="text")
    return ap.parse_args(argv)


def _model_files_server(model_dirs: list, cwd_models: bool = True, max_message_bytes: int = 0):
    try:
        from facade import model_files
    except ImportError:
        return None
    factory = getattr(model_files, "make_model_file_server", None)
    return factory(model_dirs, cwd_models, max_message_bytes=max_message_bytes) if factory else None


async def serve(args: argparse.Namespace) -> int:
    pools = {p for p in args.pools.split(",") if p}
    allocator = SlotAllocator(args.shm_fd, args.shm_slots, args.shm_slot_size) if args.shm_fd >= 0 else None
    client = BrokerClient(args.broker, allocator, max_message_bytes=(args.max_message_mb + 16) * 2**20)
    client.cores = cores.from_args(args.latency_cpus, sorted(pools), asyncio.get_running_loop())
    token = os.environ.get(args.token_env, "") if args.token_env else ""
    response_bytes = int(args.max_response_mb * 2**20)
    interceptors = ([TokenInterceptor(token)] if token else []) + [
        ResponseLimitInterceptor(response_bytes), DecodeErrorInterceptor(), CallerInterceptor()]
    max_bytes = args.max_message_mb * 2**20
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", response_bytes),
        ("grpc.so_reuseport", 0),
        # more streams on one connection wait in the client; each open stream may hold one message
        # being read plus the read-ahead below in gRPC core, outside the facade's byte budget
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        # frames are ~1 MB messages: let clients send them in few large HTTP/2 DATA frames. Read-ahead
        # per stream stays small and fixed (no BDP-grown windows): when a stream reader stops pulling
        # (byte budget), gRPC core holds at most the message being read plus this much for it
        ("grpc.http2.max_frame_size", 4 * 2**20), ("grpc.http2.lookahead_bytes", READ_AHEAD_BYTES),
        ("grpc.http2.bdp_probe", 0)])

    passthrough = PassThrough(client, ByteBudget(args.buffer_mb * 2**20))
    by_service: dict = {}
    for route in ROUTES:
        by_service.setdefault(route.service, {})[route.method] = passthrough.handler(route)
    handlers = [grpc.method_handlers_generic_handler(svc, methods) for svc, methods in by_service.items()]
    model_dirs = [d for d in args.model_dirs.split(os.pathsep) if d]
    files = _model_files_server(model_dirs, args.cwd_models != "0", response_bytes)
    handlers += [ModelManagement(client, pools, files).handlers(),
                 Stats(client, passthrough).handlers(), Diagnostics(client).handlers()]
    server.add_generic_rpc_handlers(tuple(handlers))
    service_names = [s.full_name for s in ML.DESCRIPTOR.services_by_name.values()]
    service_names += [s.full_name for s in X.DESCRIPTOR.services_by_name.values()]
    try:
        from facade.kserve import make_kserve_servicer, make_model_infer_handler
        from protos.kserve import grpc_service_pb2_grpc
        server.add_generic_rpc_handlers((make_model_infer_handler(client),))
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(make_kserve_servicer(client), server)
        service_names.append("inference.GRPCInferenceService")
    except ImportError as exc:
        log.info("KServe API not available: %s", exc)

    health_tracker = HealthTracker(pools, always_serving=("pythonml.v1.Stats",))
    health_pb2_grpc.add_HealthServicer_to_server(health_tracker.servicer, server)
    service_names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(service_names, server)

    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    try:
        address = f"{args.host}:{args.port}"
        port = (server.add_secure_port(address, grpc_server_credentials(tls)) if tls.enabled
                else server.add_insecure_port(address))
    except (RuntimeError, OSError) as exc:
        log.critical("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 2
    if port == 0:
        log.critical("cannot listen on %s:%d (address in use?)", args.host, args.port)
        return 2
    await server.start()
    await health_tracker.start()
    loop = asyncio.get_running_loop()
    client.on_pools.append(lambda p: loop.create_task(health_tracker.update(p)))
    http = None
    if args.http_port:
        from facade.openai_http import OpenAIHTTP
        http = OpenAIHTTP(client, passthrough.budget, token, max_bytes, response_bytes)
        try:
            http_port = await http.start(args.host, args.http_port,
                                         ssl_context=server_ssl_context(tls) if tls.enabled else None)
        except OSError as exc:
            log.critical("cannot listen for HTTP on %s:%d: %s", args.host, args.http_port, exc)
            return 2
        log.info("OpenAI-compatible HTTP API on %s://%s:%d/v1", "https" if tls.enabled else "http", args.host, http_port)
    await client.start({"port": port, "pid": os.getpid()})
    log.info("listening on %s:%d%s, on the %s event loop%s", args.host, port,
             " (mutual TLS)" if tls.client_ca else " (TLS)" if tls.enabled else "", event_loop.loop_name(),
             f", on cores {args.latency_cpus} while latency pools are served" if client.cores else "")

    stop = asyncio.Event()
    parent = os.getppid()

    def on_term():
        if os.getppid() != parent:
            # run.py is gone (SIGKILL): nothing to drain towards; remove its socket folder and leave
            run_dir = os.path.dirname(args.broker[len("ipc://"):]) if args.broker.startswith("ipc://") else ""
            proc.remove_run_dir(run_dir)
            os._exit(0)
        stop.set()
    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.info("draining for up to %.1fs (%d requests in flight)", args.grace_s, client.inflight())
    for service in list(health_tracker.current):
        await health_tracker.servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    if http is not None:
        await http.stop()
    await server.stop(args.grace_s)
    return 0


def main(argv=None) -> None:
    proc.set_pdeathsig(signal.SIGTERM)
    args = parse_args(argv)
    logs.configure(args.log_level, args.log_format, process_name="facade")
    code = event_loop.run(serve(args))
    sys.exit(code)


if __name__ == "__main__":
    main()
