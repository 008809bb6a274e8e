"""How each child is started: its command line, environment and inherited descriptors, from run.py's
flags and the run's resources (run folder, shared-memory fd, sockets, CurveZMQ key). The process manager
calls these factories on every (re)start; nothing here starts a process itself."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from broker.children import Child
from broker.pool_specs import PoolSpec
from common.cpu_policy import facade_cpus
from common.families import family_of

# libraries must never reach a hub, and stay quiet: set in every worker's environment
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
              "TOKENIZERS_PARALLELISM": "false", "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass
class RunResources:
    """What every child of one run shares."""
    run_dir: str
    shm_fd: int
    frontend: str                        # the facade's broker socket
    backend_connect: str                 # the workers' broker socket
    curve_server_public: Optional[bytes] = None
    remote_connect: str = ""             # tcp endpoint of the broker for workers on other nodes (Ray)

# our own settings a remote worker needs (a local child inherits the whole environment; a Ray actor on another
# node has its own): the working folder and model cache, fault injection in tests, the CurveZMQ client keys
FORWARDED_ENV_PREFIXES = ("PYTHONML_", "PML_")
NOT_FORWARDED = {"PML_PARENT_PID", "PML_CPUS", "PML_NICE", "PML_SCHED"}


def child_argv(sig: int, module: str, args: list, python: str = sys.executable) -> list:
    """`python -m common.child SIG MODULE ARGS...`: the bootstrap arms the parent-death signal first."""
    return [python, "-m", "common.child", str(int(sig)), module, *args]


def worker_options(a: argparse.Namespace, res: RunResources, pool: str, device: str, threads: int) -> dict:
    return {"auto_load": not a.no_auto_load, "model_file_service": a.model_file_service,
            "model_dirs": list(a.model_dir), "cwd_models": not a.no_working_dir_models,
            "cache_dir": os.path.join(res.run_dir, "cache", f"{pool}-{device}"),
            "threads": threads, "max_frame_bytes": a.max_frame_mb * 2**20,
            "xnnpack": not a.litert_no_xnnpack, "gpu_delegate": a.litert_gpu,
            "gpu_delegate_library": a.litert_gpu_delegate_library,
            "file_timeout_s": a.model_file_timeout_s, "file_retries": a.model_file_retries,
            "max_rss_mb": a.max_worker_rss_mb, "max_requests": a.max_worker_requests,
            "max_response_bytes": int(a.max_response_mb * 2**20)}


def worker_factory(a: argparse.Namespace, res: RunResources, spec: PoolSpec) -> Callable[[str], Child]:
    """A worker of `spec`'s pool; its CPU policy (cores, priority, scheduling class) is taken by the child bootstrap
    (common/child.py) before any heavy import, its thread budget by every library inside."""
    pool, device, policy, placement = spec.pool, spec.device, spec.policy, spec.placement
    module = family_of(pool).module
    remote = placement is not None

    def make(worker_id: str) -> Child:
        opts = worker_options(a, res, pool, device, policy.threads)
        t = str(policy.threads)
        env = {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, **WORKER_ENV, **policy.env()}
        args = ["--pool", pool, "--device", device, "--connect", res.remote_connect if remote else res.backend_connect,
                "--worker-id", worker_id, "--shm-fd", "-1" if remote else str(res.shm_fd), "--shm-slots", str(a.shm_slots),
                "--shm-slot-size", str(a.shm_slot_mb * 2**20), "--options-json", json.dumps(opts),
                "--heartbeat-interval", str(a.heartbeat_interval_s), "--drain-seconds", str(a.drain_s),
                "--max-message-bytes", str((a.max_message_mb + 16) * 2**20),
                "--log-level", a.log_level, "--log-format", a.log_format]
        if res.curve_server_public:
            # "=" form: a Z85 key may begin with "-", which argparse would take for an option
            args.append(f"--curve-server-key={res.curve_server_public.decode()}")
        if remote:
            return _remote_child(a, worker_id, module, args, env, placement)
        return Child(name=worker_id, argv=child_argv(signal.SIGKILL, module, args), env=env, pass_fds=(res.shm_fd,))
    return make


def _remote_child(a: argparse.Namespace, worker_id: str, module: str, args: list, env: dict, placement) -> Child:
    """A worker placed on a Ray node (broker/ray_children.py): the same command line, run from the project
    folder of that node with its Python, with the environment it cannot inherit from us."""
    python = a.ray_python or os.path.join(a.ray_project_dir, ".venv", "bin", "python")
    env = {**{k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) and k not in NOT_FORWARDED},
           **env, "PYTHONUNBUFFERED": "1"}
    return Child(name=worker_id, argv=child_argv(signal.SIGKILL, module, args, python), env=env,
                 placement=placement, cwd=a.ray_project_dir)


def facade_factory(a: argparse.Namespace, res: RunResources, pools: list, port: Callable[[], int]) -> Callable[[], Child]:
    """The facade; `port()` is read at each start, so a restarted facade binds the port its first one got."""
    names = ",".join(sorted({spec.pool for spec in pools}))
    cores = facade_cpus([spec.policy for spec in pools if spec.placement is None])   # Ray pools: other nodes
    latency_cpus = "" if cores is None else ",".join(str(c) for c in cores)

    def make() -> Child:
        args = ["--host", a.host, "--port", str(port()), "--broker", res.frontend, "--pools", names,
                "--shm-fd", str(res.shm_fd), "--shm-slots", str(a.shm_slots),
                "--shm-slot-size", str(a.shm_slot_mb * 2**20), "--token-env", a.auth_token_env,
                "--max-message-mb", str(a.max_message_mb), "--buffer-mb", str(a.facade_buffer_mb),
                "--max-response-mb", str(a.max_response_mb), "--http-port", str(a.http_port),
                "--grace-s", str(a.drain_s), "--model-dirs", os.pathsep.join(a.model_dir),
                "--cwd-models", "0" if a.no_working_dir_models else "1",
                "--tls-cert", a.tls_cert, "--tls-key", a.tls_key, "--tls-client-ca", a.tls_client_ca,
                "--latency-cpus", latency_cpus, "--log-level", a.log_level, "--log-format", a.log_format]
        return Child(name="facade", argv=child_argv(signal.SIGTERM, "facade.server", args), env={},
                     pass_fds=(res.shm_fd,))
    return make
