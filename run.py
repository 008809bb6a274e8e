#!/usr/bin/env python3
"""PythonML entry point: argument parsing and wiring. The process manager (broker/process_manager.py) runs
in this process and owns the facade and every worker as children; the router (broker/router.py) beside it.

`python run.py [--port 50051] ...` starts the service; `python run.py call VERB ...` is the client CLI.
Every flag can also be given as an environment variable PML_<FLAG> (e.g. PML_PORT=50052).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def _use_project_venv() -> None:
    """The orchestrator starts `python3 run.py` with no venv: re-exec with the project's .venv if present."""
    if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(ROOT, ".venv")) \
            and not os.environ.get("PML_NO_VENV_REEXEC"):
        os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    _use_project_venv()
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common import logs, proc  # noqa: E402
from broker.pool_specs import parse_pool_specs  # noqa: E402
from common.families import default_pools  # noqa: E402

log = logging.getLogger("main")

MAX_RESPONSE_MB = 2047   # gRPC message sizes are 32-bit signed


def env_default(name: str, default, cast=str):
    raw = os.environ.get("PML_" + name.upper().replace("-", "_"))
    if raw is None:
        return default
    if cast is bool:
        from common.options import as_bool
        from common.status import StatusError
        try:
            return as_bool(raw, default, name="PML_" + name.upper().replace("-", "_"))
        except StatusError as exc:
            raise SystemExit(f"PythonML cannot start: {exc.message}") from None
    return cast(raw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="run.py", description="PythonML inference service. Every flag also reads PML_<FLAG> from the environment.",
        epilog="Client: python run.py call --help")
    a = ap.add_argument
    a("--host", default=env_default("host", "127.0.0.1"), help="gRPC bind address (default 127.0.0.1)")
    a("--port", type=int, default=env_default("port", 50051, int), help="gRPC port (default 50051; 0 = any free port)")
    a("--pools", default=env_default("pools", default_pools()),
      help="comma list of pool[@device][*count][[settings]], e.g. 'vision,hf,hf@cuda:0,litert' (default: vision,hf,litert "
           "on cpu plus hf on every CUDA device); settings override the CPU policy of a pool: "
           "'vision[cpus=0],hf[cpus=1;nice=5;threads=1;sched=normal]'")
    a("--cpu-policy", choices=["auto", "off"], default=env_default("cpu_policy", "auto"),
      help="auto (default): latency pools (vision, litert) at normal priority, throughput pools (hf) at nice 10, "
           "thread budgets from the cores; with both kinds and >= 2 cores, latency pools pinned to the first half "
           "of the cores and throughput pools to the rest in SCHED_IDLE; off: every worker at the service's "
           "priority (cpus/threads/sched settings still apply)")
    a("--cuda", choices=["auto", "off"], default=env_default("cuda", "auto"),
      help="add an hf worker per CUDA device when --pools has no explicit device (default auto)")
    a("--log-level", default=env_default("log_level", "info"), choices=["debug", "info", "warning", "error"])
    a("--log-format", default=env_default("log_format", "text"), choices=["text", "json"])
    a("--auth-token-env", default=env_default("auth_token_env", "PYTHONML_TOKEN"),
      help="name of the environment variable holding the shared token; when it is set, calls need "
           "'authorization: Bearer <token>' (health stays open)")
    a("--tls-cert", default=env_default("tls_cert", ""),
      help="PEM certificate chain: serve gRPC (and the HTTP API) over TLS; with --tls-key")
    a("--tls-key", default=env_default("tls_key", ""), help="PEM private key of --tls-cert")
    a("--tls-client-ca", default=env_default("tls_client_ca", ""),
      help="PEM CA certificates: clients must present a certificate signed by one (mutual TLS)")
    a("--allow-insecure-network", action="store_true", default=env_default("allow_insecure_network", False, bool),
      help="start on a non-loopback --host without TLS and without a token (refused otherwise)")
    a("--metrics-port", type=int, default=env_default("metrics_port", 0, int),
      help="Prometheus text endpoint port on --host (0 = off)")
    a("--http-port", type=int, default=env_default("http_port", 0, int),
      help="OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/embeddings, "
           "/v1/audio/transcriptions, /v1/models) on --host (0 = off, the default); the shared token is its API key")
    a("--shm-slots", type=int, default=env_default("shm_slots", 32, int), help="frames in flight through shared memory")
    a("--shm-slot-mb", type=int, default=env_default("shm_slot_mb", 8, int), help="largest frame through shared memory (MiB)")
    a("--max-message-mb", type=int, default=env_default("max_message_mb", 64, int),
      help="largest request message the service reads, and the internal message limit (MiB)")
    a("--max-response-mb", type=float, default=env_default("max_response_mb", 4.0, float),
      help="largest message the service sends (MiB, default 4: what the orchestrator's client reads). A larger "
           "unary answer is refused with RESOURCE_EXHAUSTED saying what to ask for instead; streamed model files, "
           "video frames and masks are cut, compressed or scaled to fit")
    a("--facade-buffer-mb", type=int, default=env_default("facade_buffer_mb", 256, int),
      help="request bytes the gRPC facade holds at once (stream frames waiting or in flight, unary requests "
           "not yet answered); beyond it streams are paced by flow control and unary calls get RESOURCE_EXHAUSTED")
    a("--max-frame-mb", type=int, default=env_default("max_frame_mb", 32, int), help="largest decoded frame a worker accepts (MiB)")
    a("--queue-limit", type=int, default=env_default("queue_limit", 256, int), help="queued requests per pool before RESOURCE_EXHAUSTED")
    a("--queue-timeout-s", type=float, default=env_default("queue_timeout_s", 30.0, float),
      help="longest wait for a live worker before UNAVAILABLE")
    a("--caller-queue-limit", type=int, default=env_default("caller_queue_limit", 0, int),
      help="queued requests per client connection and pool before RESOURCE_EXHAUSTED (0 = no fixed cap: a "
           "client may use the whole --queue-limit until others queue, then it keeps only its fair share)")
    a("--stall-timeout-s", type=float, default=env_default("stall_timeout_s", 300.0, float),
      help="progress watchdog: a worker whose every slot holds a request silent this long (requests without "
           "a deadline) or past its deadline by max(5 s, --heartbeat-timeout-s) is killed and restarted "
           "(0 = watchdog off)")
    a("--heartbeat-interval-s", type=float, default=env_default("heartbeat_interval_s", 1.0, float))
    a("--heartbeat-timeout-s", type=float, default=env_default("heartbeat_timeout_s", 5.0, float),
      help="a worker silent this long is killed as hung and restarted")
    a("--startup-timeout-s", type=float, default=env_default("startup_timeout_s", 300.0, float))
    a("--drain-s", type=float, default=env_default("drain_s", 10.0, float), help="SIGTERM: longest wait for in-flight work")
    a("--worker-threads", type=int, default=env_default("worker_threads", 0, int),
      help="thread budget per worker (0 = automatic: half of the cores for a latency pool, the other half for a "
           "throughput pool beside it, every core for a throughput pool alone; a pool's threads= setting wins)")
    a("--model-dir", action="append", default=[d for d in env_default("model_dir", "").split(os.pathsep) if d],
      help="folder holding local models (repeatable)")
    a("--no-working-dir-models", action="store_true", default=env_default("no_working_dir_models", False, bool),
      help="do not serve models from the working directory's models/ folder (the orchestrator's cache of "
           "models/<org>/<repo>/<file>, a model folder by default)")
    a("--model-file-service", default=env_default("model_file_service", ""),
      help="address of the orchestrator's GetModelFile service (host:port)")
    a("--model-file-timeout-s", type=float, default=env_default("model_file_timeout_s", 600.0, float),
      help="longest wait for one file from the model file service (an operator setting, never a request option)")
    a("--model-file-retries", type=int, default=env_default("model_file_retries", 3, int),
      help="retries of a broken file-service stream")
    a("--preload", action="append", default=[p for p in env_default("preload", "").split(",") if p],
      help="load a model as soon as its worker is up, and again after every restart: "
           "[pool[@device]=]MODEL_ID, repeatable (e.g. SmolLM2-135M-Instruct, litert=face_detection_short_range)")
    a("--no-auto-load", action="store_true", default=env_default("no_auto_load", False, bool),
      help="refuse requests for models not loaded with LoadModel (default: load on first use)")
    a("--max-worker-rss-mb", type=float, default=env_default("max_worker_rss_mb", 0.0, float),
      help="recycle a worker between requests when its RSS exceeds this (0 = no cap)")
    a("--max-worker-requests", type=int, default=env_default("max_worker_requests", 0, int),
      help="recycle a worker between requests after this many requests (0 = never)")
    a("--litert-no-xnnpack", action="store_true", default=env_default("litert_no_xnnpack", False, bool))
    a("--litert-gpu", action="store_true", default=env_default("litert_gpu", False, bool),
      help="try the LiteRT GPU delegate (falls back to CPU with a message)")
    a("--litert-gpu-delegate-library", default=env_default("litert_gpu_delegate_library", ""),
      help="path of the LiteRT GPU delegate library (default: LITERT_GPU_DELEGATE, else "
           "libtensorflowlite_gpu_delegate.so); an operator setting, never a request option")
    a("--worker-endpoint", default=env_default("worker_endpoint", ""),
      help="bind the worker socket on tcp://host:port (CurveZMQ keys required) instead of a private ipc socket")
    a("--ray-address", default=env_default("ray_address", ""),
      help="Ray cluster for the pools placed with [ray] in --pools (e.g. auto, 10.0.0.5:6379, ray://head:10001): "
           "their workers become Ray actors on nodes whose resources fit and join the broker over tcp with "
           "CurveZMQ (after scripts/setup.sh --ray); other pools stay local processes")
    a("--ray-project-dir", default=env_default("ray_project_dir", ROOT),
      help="the PythonML folder on the Ray nodes (default: this one's path, the same on every node)")
    a("--ray-python", default=env_default("ray_python", ""),
      help="Python of the workers on the Ray nodes (default: .venv/bin/python in --ray-project-dir)")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "call":
        from client.cli import main as client_main
        return client_main(argv[1:])
    args = build_parser().parse_args(argv)
    if not 0 < args.max_response_mb <= MAX_RESPONSE_MB:
        sys.stderr.write(f"PythonML cannot start: --max-response-mb {args.max_response_mb:g} is outside (0, "
                         f"{MAX_RESPONSE_MB}]; the orchestrator's client reads 4 MiB messages (the default)\n")
        return 2
    try:
        pools = parse_pool_specs(args.pools, args.cuda, args.cpu_policy == "auto", args.worker_threads)
    except ValueError as exc:
        sys.stderr.write(f"PythonML cannot start: --pools {args.pools!r}: {exc}\n")
        return 2
    from common.tls import TlsFiles, check_files, exposure_problem
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    token = os.environ.get(args.auth_token_env, "") if args.auth_token_env else ""
    problem = check_files(tls) or exposure_problem(args.host, tls, token, args.allow_insecure_network) \
        or _ray_problem(args, pools)
    if problem:
        sys.stderr.write(f"PythonML cannot start: {problem}\n")
        return 2
    missing = [m for m in ("zmq", "msgpack", "grpc", "google.protobuf", "psutil") if not _importable(m)]
    if missing:
        sys.stderr.write(f"PythonML cannot start: missing Python packages {', '.join(missing)} for {sys.executable}. "
                         f"Run scripts/setup.sh once (it creates .venv, which run.py then uses by itself).\n")
        return 1
    # children run from the project folder: tell them the service's working directory (whose models/ is a
    # model folder: the orchestrator's cache of models/<org>/<repo>/<file>, common/model_access.py)
    os.environ.setdefault("PYTHONML_WORKING_DIR", os.getcwd())
    return Service(args, pools).run()


def _ray_problem(args: argparse.Namespace, pools: list) -> str:
    """Why the Ray settings cannot work, before anything starts ("" when they can)."""
    placed = sorted({spec.pool for spec in pools if spec.placement is not None})
    if placed and not args.ray_address:
        return (f"pool(s) {', '.join(placed)} are placed on Ray ([ray] in --pools) but --ray-address is not set "
                f"(e.g. --ray-address auto on a node of the cluster)")
    if placed and not _importable("ray"):
        return "pools are placed on Ray but the ray package is not installed: run scripts/setup.sh --ray"
    if args.ray_address and not placed:
        log.warning("--ray-address is set but no pool is placed on Ray (add [ray] to a pool in --pools)")
    return ""


def _importable(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Service:
    """Wiring: the run's resources (run folder, shared-memory pool, sockets, keys), the process manager
    with the facade and every pool's workers, the metrics endpoint, signals. The manager does the rest."""

    def __init__(self, args: argparse.Namespace, pools: list):
        self.args = args
        self.pools = pools               # [PoolSpec], parsed and checked by main()
        self.stop_requested = False
        self.port = args.port

    def _preload_plan(self) -> dict:
        """--preload specs -> {(pool, device): {model_id: (method, LoadModelRequest bytes)}}.

        Preloads ride on the process manager's replay of acknowledged loads: sent when the worker is READY
        and again after each restart, so a recycled or crashed worker comes back warm."""
        if not self.args.preload:
            return {}
        from common.methods import LOAD_MODEL
        from common.placement import parse_preload, pool_for_load
        from protos import ml_inference_pb2 as ML
        plan: dict = {}
        for spec in self.args.preload:
            pool, device, model_id = parse_preload(spec)
            if not model_id:
                raise SystemExit(f"--preload {spec!r}: no model id")
            pool = pool or pool_for_load("", model_id, {})
            devices = [spec.device for spec in self.pools if spec.pool == pool]
            if not devices:
                raise SystemExit(f"--preload {spec!r}: pool '{pool}' is not in --pools {self.args.pools}")
            device = device or devices[0]
            if device not in devices:
                raise SystemExit(f"--preload {spec!r}: no {pool} worker on {device} (have {', '.join(devices)})")
            req = ML.LoadModelRequest(model_id=model_id, options={"device": device} if pool == "hf" else {})
            plan.setdefault((pool, device), {})[model_id] = (LOAD_MODEL, req.SerializeToString())
        return plan

    def _on_facade_ready(self, header: dict) -> None:
        port = int(header.get("port") or 0)
        if port:
            self.port = port  # a restarted facade binds the same port
        logs.write_nonblocking(1, f"READY port={self.port} pid={os.getpid()}\n".encode())
        log.info("listening on %s:%d (ready in %.2fs)", self.args.host, self.port, time.time() - self.t0)

    def _worker_socket(self, run_dir: str, ray_ip: str) -> tuple:
        """(bind endpoint, extra bind endpoints, connect endpoint, CurveZMQ server public key, secret key) of
        the workers' socket. With Ray-placed pools (`ray_ip`: this node's address in the cluster) and no
        --worker-endpoint, local workers keep the ipc socket and remote ones get tcp on that address."""
        a = self.args
        ipc = f"ipc://{run_dir}/backend.sock"
        if not a.worker_endpoint and not ray_ip:
            return ipc, (), ipc, None, None
        import zmq
        public, secret = zmq.curve_keypair()
        wpub, wsec = zmq.curve_keypair()
        os.environ["PML_CURVE_PUBLIC"], os.environ["PML_CURVE_SECRET"] = wpub.decode(), wsec.decode()
        if not a.worker_endpoint:
            return ipc, (f"tcp://{ray_ip}:*",), ipc, public, secret
        return a.worker_endpoint, (), a.worker_endpoint.replace("*", "127.0.0.1"), public, secret

    def _remote_connect(self, manager, ray_ip: str) -> str:
        """Where a worker on another node reaches the broker (tcp; a wildcard host becomes our node's address)."""
        endpoint = manager.router.remote_endpoint()
        for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
            if endpoint.startswith(wildcard):
                endpoint = f"tcp://{ray_ip or '127.0.0.1'}:" + endpoint[len(wildcard):]
        return endpoint

    def run(self) -> int:
        self.t0 = time.time()
        a = self.args
        proc.set_pdeathsig(signal.SIGTERM)  # the orchestrator died: shut down
        logs.configure(a.log_level, a.log_format, process_name="main", nonblocking=True)
        logs.set_nonblocking(1)
        from broker import launch
        from broker.process_manager import ManagerConfig, ProcessManager
        from broker.router import RouterConfig
        from shm.pool import create_pool_fd

        run_dir = proc.make_run_dir()
        manager = ray = None
        exit_code = 0
        try:
            shm_fd = create_pool_fd(a.shm_slots, a.shm_slot_mb * 2**20)
            shm_reader = None
            if any(spec.placement is not None for spec in self.pools):
                from broker.ray_children import RayChildren
                from shm.pool import SlotReader
                ray = RayChildren(a.ray_address)
                shm_reader = SlotReader(shm_fd, a.shm_slots, a.shm_slot_mb * 2**20)  # frames copied inline for them
            ray_ip = ray.node_ip() if ray else ""
            backend, extra, backend_connect, curve_public, curve_secret = self._worker_socket(run_dir, ray_ip)
            manager = ProcessManager(
                ManagerConfig(heartbeat_timeout_s=a.heartbeat_timeout_s, startup_timeout_s=a.startup_timeout_s,
                              stall_timeout_s=a.stall_timeout_s),
                RouterConfig(frontend=f"ipc://{run_dir}/frontend.sock", backend=backend, queue_limit=a.queue_limit,
                             caller_queue_limit=a.caller_queue_limit, queue_timeout_s=a.queue_timeout_s,
                             max_message_bytes=(a.max_message_mb + 16) * 2**20,
                             curve_secret=curve_secret, curve_public=curve_public, extra_backends=extra,
                             shm_reader=shm_reader),
                remote=ray)
            res = launch.RunResources(run_dir, shm_fd, f"ipc://{run_dir}/frontend.sock", backend_connect, curve_public,
                                      remote_connect=self._remote_connect(manager, ray_ip) if ray else "")
            if curve_secret:
                self._start_curve_auth(run_dir, os.environ["PML_CURVE_PUBLIC"].encode())
            preload = self._preload_plan()
            manager.start_facade(launch.facade_factory(a, res, self.pools, lambda: self.port), self._on_facade_ready)
            for spec in self.pools:
                for _ in range(spec.count):
                    manager.add_worker(spec.pool, spec.device, launch.worker_factory(a, res, spec),
                                       replay=preload.get((spec.pool, spec.device), {}), policy=spec.policy)
            if a.metrics_port:
                from broker.metrics import start_metrics
                token = os.environ.get(a.auth_token_env, "") if a.auth_token_env else ""
                start_metrics(a.host, a.metrics_port, lambda: manager.snapshot, token=token)

            def on_signal(signum, frame) -> None:
                if not self.stop_requested:
                    log.info("received %s: draining", signal.Signals(signum).name)
                self.stop_requested = True
                manager.request_stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, on_signal)
            proc.watch_parent(lambda: os.kill(os.getpid(), signal.SIGTERM))
            manager.run(lambda: self.stop_requested)
            exit_code = 1 if manager.failed else 0
            manager.shutdown(a.drain_s)
            log.info("stopped (exit %d)", exit_code)
        except Exception:
            log.critical("fatal error: %s", sys.exc_info()[1], exc_info=True)
            exit_code = 1
        finally:
            if manager is not None:
                try:
                    manager.kill_all()
                except Exception:
                    pass
            elif ray is not None:
                ray.shutdown()
            proc.remove_run_dir(run_dir)
        return exit_code

    def _start_curve_auth(self, run_dir: str, allowed_public: bytes) -> None:
        """Only workers holding our generated client key may join the tcp worker socket."""
        import zmq
        from zmq.auth.thread import ThreadAuthenticator
        self.auth = ThreadAuthenticator(zmq.Context.instance())
        self.auth.start()
        keys_dir = os.path.join(run_dir, "curve")
        os.makedirs(keys_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(keys_dir, "worker.key"), "w") as f:
            f.write(f'metadata\ncurve\n    public-key = "{allowed_public.decode()}"\n')
        self.auth.configure_curve(domain="*", location=keys_dir)


if __name__ == "__main__":
    sys.exit(main())
