#!/usr/bin/env python3
"""PythonML entry point: supervisor + broker in this process; facade and workers as children.

`python run.py [--port 50051] ...` starts the service; `python run.py call VERB ...` is the client CLI.
Every flag can also be given as an environment variable PML_<FLAG> (e.g. PML_PORT=50052).
"""
from __future__ import annotations

import argparse
import json
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

log = logging.getLogger("main")

DEFAULT_POOLS = "vision,hf,litert"
MAX_RESPONSE_MB = 2047   # gRPC message sizes are 32-bit signed


def env_default(name: str, default, cast=str):
    raw = os.environ.get("PML_" + name.upper().replace("-", "_"))
    if raw is None:
        return default
    if cast is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return cast(raw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="run.py", description="PythonML inference service. Every flag also reads PML_<FLAG> from the environment.",
        epilog="Client: python run.py call --help")
    a = ap.add_argument
    a("--host", default=env_default("host", "127.0.0.1"), help="gRPC bind address (default 127.0.0.1)")
    a("--port", type=int, default=env_default("port", 50051, int), help="gRPC port (default 50051; 0 = any free port)")
    a("--pools", default=env_default("pools", DEFAULT_POOLS),
      help="comma list of pool[@device][*count], e.g. 'vision,hf,hf@cuda:0,litert' (default: vision,hf,litert "
           "on cpu plus hf on every CUDA device)")
    a("--cuda", choices=["auto", "off"], default=env_default("cuda", "auto"),
      help="add an hf worker per CUDA device when --pools has no explicit device (default auto)")
    a("--log-level", default=env_default("log_level", "info"), choices=["debug", "info", "warning", "error"])
    a("--log-format", default=env_default("log_format", "text"), choices=["text", "json"])
    a("--auth-token-env", default=env_default("auth_token_env", "PYTHONML_TOKEN"),
      help="name of the environment variable holding the shared token; when it is set, calls need "
           "'authorization: Bearer <token>' (health stays open)")
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
      help="thread budget per worker (0 = automatic share of the CPUs)")
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
    return ap


def detect_cuda_devices() -> list:
    """Count NVIDIA GPUs without importing torch (start-up stays light)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []
    try:
        gpus = os.listdir("/proc/driver/nvidia/gpus")
    except OSError:
        return []
    n = len(gpus)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        n = min(n, len([v for v in visible.split(",") if v.strip()]))
    return [f"cuda:{i}" for i in range(n)]


def parse_pools(spec: str, cuda: str) -> list:
    """'vision,hf@cuda:0*2' -> [(pool, device, count)]."""
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        count = 1
        if "*" in item:
            item, n = item.split("*", 1)
            count = int(n)
        pool, _, device = item.partition("@")
        out.append((pool, device or "cpu", count))
    explicit_cuda = any(d.startswith("cuda") for _, d, _ in out)
    if cuda == "auto" and not explicit_cuda and any(p == "hf" for p, _, _ in out):
        out += [("hf", dev, 1) for dev in detect_cuda_devices()]
    return out


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
    missing = [m for m in ("zmq", "msgpack", "grpc", "google.protobuf", "psutil") if not _importable(m)]
    if missing:
        sys.stderr.write(f"PythonML cannot start: missing Python packages {', '.join(missing)} for {sys.executable}. "
                         f"Run scripts/setup.sh once (it creates .venv, which run.py then uses by itself).\n")
        return 1
    # children run from the project folder: tell them the service's working directory (whose models/ is a
    # model folder: the orchestrator's cache of models/<org>/<repo>/<file>, common/model_access.py)
    os.environ.setdefault("PYTHONML_WORKING_DIR", os.getcwd())
    return Service(args).run()


def _importable(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Service:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.stop_requested = False
        self.ready_printed = False
        self.exit_code = 0

    def _worker_options(self, pool: str, device: str) -> dict:
        ncpu = os.cpu_count() or 1
        threads = self.args.worker_threads or (ncpu if pool == "hf" else max(1, ncpu // 2))
        return {"auto_load": not self.args.no_auto_load, "model_file_service": self.args.model_file_service,
                "model_dirs": list(self.args.model_dir), "cwd_models": not self.args.no_working_dir_models, "cache_dir": os.path.join(self.run_dir, "cache", f"{pool}-{device}"),
                "threads": threads, "max_frame_bytes": self.args.max_frame_mb * 2**20,
                "xnnpack": not self.args.litert_no_xnnpack, "gpu_delegate": self.args.litert_gpu,
                "gpu_delegate_library": self.args.litert_gpu_delegate_library,
                "file_timeout_s": self.args.model_file_timeout_s, "file_retries": self.args.model_file_retries,
                "max_rss_mb": self.args.max_worker_rss_mb, "max_requests": self.args.max_worker_requests,
                "max_response_bytes": int(self.args.max_response_mb * 2**20)}

    def _worker_child(self, pool: str, device: str):
        from broker.supervisor import Child, module_for_pool

        def make(worker_id: str) -> Child:
            opts = self._worker_options(pool, device)
            t = str(opts["threads"])
            env = {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t,
                   "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}
            argv = [sys.executable, "-m", "common.child", str(int(signal.SIGKILL)), module_for_pool(pool), "--pool", pool,
                    "--device", device, "--connect", self.backend_connect, "--worker-id", worker_id,
                    "--shm-fd", str(self.shm_fd), "--shm-slots", str(self.args.shm_slots),
                    "--shm-slot-size", str(self.args.shm_slot_mb * 2**20), "--options-json", json.dumps(opts),
                    "--heartbeat-interval", str(self.args.heartbeat_interval_s), "--drain-seconds", str(self.args.drain_s),
                    "--max-message-bytes", str((self.args.max_message_mb + 16) * 2**20),
                    "--log-level", self.args.log_level, "--log-format", self.args.log_format]
            if self.curve_server_public:
                # "=" form: a Z85 key may begin with "-", which argparse would take for an option
                argv += [f"--curve-server-key={self.curve_server_public.decode()}"]
            return Child(name=worker_id, argv=argv, env=env, pass_fds=(self.shm_fd,))
        return make

    def _preload_plan(self) -> dict:
        """--preload specs -> {(pool, device): {model_id: (method, LoadModelRequest bytes)}}.

        Preloads ride on the broker's replay of acknowledged loads: sent when the worker is READY and
        again after each restart, so a recycled or crashed worker comes back warm."""
        if not self.args.preload:
            return {}
        from common.placement import parse_preload, pool_for_load
        from protos import ml_inference_pb2 as ML
        plan: dict = {}
        for spec in self.args.preload:
            pool, device, model_id = parse_preload(spec)
            if not model_id:
                raise SystemExit(f"--preload {spec!r}: no model id")
            pool = pool or pool_for_load("", model_id, {})
            devices = [d for p, d, _ in self.pools if p == pool]
            if not devices:
                raise SystemExit(f"--preload {spec!r}: pool '{pool}' is not in --pools {self.args.pools}")
            device = device or devices[0]
            if device not in devices:
                raise SystemExit(f"--preload {spec!r}: no {pool} worker on {device} (have {', '.join(devices)})")
            req = ML.LoadModelRequest(model_id=model_id, options={"device": device} if pool == "hf" else {})
            plan.setdefault((pool, device), {})[model_id] = ("ml.ModelManagementService/LoadModel",
                                                             req.SerializeToString())
        return plan

    def _facade_child(self):
        from broker.supervisor import Child
        a = self.args
        pools = ",".join(sorted({p for p, _, _ in self.pools}))
        argv = [sys.executable, "-m", "common.child", str(int(signal.SIGTERM)), "facade.server", "--host", a.host, "--port", str(self.port), "--broker", self.frontend,
                "--pools", pools, "--shm-fd", str(self.shm_fd), "--shm-slots", str(a.shm_slots),
                "--shm-slot-size", str(a.shm_slot_mb * 2**20), "--token-env", a.auth_token_env,
                "--max-message-mb", str(a.max_message_mb), "--buffer-mb", str(a.facade_buffer_mb),
                "--max-response-mb", str(a.max_response_mb),
                "--http-port", str(a.http_port),
                "--grace-s", str(a.drain_s), "--model-dirs", os.pathsep.join(a.model_dir),
                "--cwd-models", "0" if a.no_working_dir_models else "1",
                "--log-level", a.log_level, "--log-format", a.log_format]
        return Child(name="facade", argv=argv, env={}, pass_fds=(self.shm_fd,))

    def _on_hello(self, header: dict) -> None:
        port = int(header.get("port") or 0)
        if port and not self.ready_printed:
            self.port = port  # a restarted facade binds the same port
            logs.write_nonblocking(1, f"READY port={port} pid={os.getpid()}\n".encode())
            self.ready_printed = True
            log.info("listening on %s:%d (ready in %.2fs)", self.args.host, port, time.time() - self.t0)

    def _on_facade_exit(self, pidfd: int) -> None:
        from broker.supervisor import describe_exit
        child = self.sup.reap(pidfd)
        code = child.exit_code if child else None
        if self.stop_requested:
            self.facade_done = True
            return
        if not self.ready_printed:
            log.critical("the gRPC facade failed to start (%s); see the log above", describe_exit(code))
            self.exit_code = 1
            self.stop_requested = True
            self.facade_done = True
            return
        log.error("the gRPC facade died (%s); restarting it", describe_exit(code))
        if child is not None:
            dropped = self.broker.forget_facade(f"facade-{child.pid}".encode())
            if dropped:
                log.warning("cancelled %d requests of the dead facade", dropped)
        self.facade_restarts += 1
        time.sleep(min(2.0, 0.1 * self.facade_restarts))
        self._start_facade()

    def _start_facade(self) -> None:
        self.facade = self.sup.spawn(self._facade_child())
        self.broker.extra_pidfd_handlers[self.facade.pidfd] = self._on_facade_exit

    def run(self) -> int:
        self.t0 = time.time()
        a = self.args
        proc.set_pdeathsig(signal.SIGTERM)  # the orchestrator died: shut down
        logs.configure(a.log_level, a.log_format, process_name="main", nonblocking=True)
        logs.set_nonblocking(1)
        from broker.router import Broker, BrokerConfig
        from broker.supervisor import Supervisor
        from shm.pool import create_pool_fd

        self.pools = parse_pools(a.pools, a.cuda)
        self.port = a.port
        self.run_dir = proc.make_run_dir()
        self.facade_done = False
        self.facade_restarts = 0
        self.curve_server_public = None
        try:
            self.shm_fd = create_pool_fd(a.shm_slots, a.shm_slot_mb * 2**20)
            self.frontend = f"ipc://{self.run_dir}/frontend.sock"
            if a.worker_endpoint:
                import zmq
                self.curve_server_public, secret = zmq.curve_keypair()
                cfg_backend, self.backend_connect = a.worker_endpoint, a.worker_endpoint.replace("*", "127.0.0.1")
                wpub, wsec = zmq.curve_keypair()
                os.environ["PML_CURVE_PUBLIC"], os.environ["PML_CURVE_SECRET"] = wpub.decode(), wsec.decode()
            else:
                secret = None
                cfg_backend = self.backend_connect = f"ipc://{self.run_dir}/backend.sock"
            self.sup = Supervisor()
            self.broker = Broker(BrokerConfig(frontend=self.frontend, backend=cfg_backend, queue_limit=a.queue_limit,
                                              queue_timeout_s=a.queue_timeout_s, heartbeat_timeout_s=a.heartbeat_timeout_s,
                                              caller_queue_limit=a.caller_queue_limit, stall_timeout_s=a.stall_timeout_s,
                                              startup_timeout_s=a.startup_timeout_s,
                                              max_message_bytes=(a.max_message_mb + 16) * 2**20,
                                              curve_secret=secret, curve_public=self.curve_server_public), self.sup)
            if secret:
                self._start_curve_auth(os.environ["PML_CURVE_PUBLIC"].encode())
            self.broker.on_hello = self._on_hello
            preload = self._preload_plan()
            self._start_facade()
            for pool, device, count in self.pools:
                for _ in range(count):
                    slot = self.broker.add_slot(pool, device, self._worker_child(pool, device))
                    slot.replay.update(preload.get((pool, device), {}))
            if a.metrics_port:
                from broker.metrics import start_metrics
                token = os.environ.get(a.auth_token_env, "") if a.auth_token_env else ""
                start_metrics(a.host, a.metrics_port, lambda: self.broker.snapshot, token=token)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
            proc.watch_parent(lambda: os.kill(os.getpid(), signal.SIGTERM))
            while not self.stop_requested:
                self.broker.poll_once(50)
            self._shutdown()
        except Exception:
            log.critical("fatal error: %s", sys.exc_info()[1], exc_info=True)
            self.exit_code = self.exit_code or 1
        finally:
            try:
                self.sup.kill_all()
            except Exception:
                pass
            proc.remove_run_dir(self.run_dir)
        return self.exit_code

    def _start_curve_auth(self, allowed_public: bytes) -> None:
        """Only workers holding our generated client key may join the tcp worker socket."""
        import zmq
        from zmq.auth.thread import ThreadAuthenticator
        self.auth = ThreadAuthenticator(zmq.Context.instance())
        self.auth.start()
        keys_dir = os.path.join(self.run_dir, "curve")
        os.makedirs(keys_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(keys_dir, "worker.key"), "w") as f:
            f.write(f'metadata\ncurve\n    public-key = "{allowed_public.decode()}"\n')
        self.auth.configure_curve(domain="*", location=keys_dir)

    def _on_signal(self, signum, frame) -> None:
        if not self.stop_requested:
            log.info("received %s: draining", signal.Signals(signum).name)
        self.stop_requested = True
        self.broker.stopping = True  # no restarts from now on

    def _shutdown(self) -> None:
        a = self.args
        if self.exit_code == 0:
            self.sup.kill(self.facade, signal.SIGTERM)
            end = time.time() + a.drain_s + 3
            while not self.facade_done and time.time() < end:
                self.broker.poll_once(50)
        self.broker.stop_workers(timeout_s=min(a.drain_s, 10))
        self.broker.close()
        log.info("stopped (exit %d)", self.exit_code)


if __name__ == "__main__":
    sys.exit(main())
