"""The one allow-list of LoadModel options a request may set, with their bounds.

A LoadModel (or KServe RepositoryModelLoad) request carries a free ``map<string,string>`` of options.
Only the names below are accepted; each value is checked before any file is touched or any thread is
created. Settings that name code, a host or a duration the service waits on (delegate libraries, the
model file service, its timeouts, cache and model folders) are operator settings: they come from the
command line or the environment only, and a request that carries one is refused with PERMISSION_DENIED
naming the flag to use instead. Thread and worker counts are bounded by the worker's thread budget.

``check_load_options(options, threads_budget)`` returns the options unchanged or raises StatusError.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Dict

from common.options import is_boolean
from common.status import StatusError

# request option -> the operator setting that replaces it
OPERATOR_ONLY: Dict[str, str] = {
    "gpu_delegate_library": "--litert-gpu-delegate-library (or LITERT_GPU_DELEGATE)",
    "file_service": "--model-file-service",
    "model_file_service": "--model-file-service",
    "file_timeout_s": "--model-file-timeout-s",
    "file_retries": "--model-file-retries",
    "cache_dir": "PYTHONML_MODEL_CACHE",
    "model_dir": "--model-dir",
    "model_dirs": "--model-dir",
}
MAX_VALUE_CHARS = 4096
MAX_CONFIG_CHARS = 64 * 1024
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")


def _text(max_chars: int = 256) -> Callable:
    def check(name: str, v: str, budget: int) -> None:
        if len(v) > max_chars:
            raise StatusError("INVALID_ARGUMENT", f"option {name} is {len(v)} characters long; the limit is {max_chars}")
    return check


def _boolean(name: str, v: str, budget: int) -> None:
    if v.strip().lower() != "auto" and not is_boolean(v):
        raise StatusError("INVALID_ARGUMENT", f"option {name}='{v[:40]}' is not a boolean (true/false)")


def _choice(*values: str) -> Callable:
    def check(name: str, v: str, budget: int) -> None:
        if v.strip().lower() not in values:
            raise StatusError("INVALID_ARGUMENT", f"option {name}='{v[:40]}' is not one of {', '.join(v for v in values if v)}")
    return check


def _number(lo: float, hi, cast=int) -> Callable:
    """hi may be the string "budget": the worker's thread budget."""
    def check(name: str, v: str, budget: int) -> None:
        top = budget if hi == "budget" else hi
        try:
            x = cast(v.strip())
        except ValueError:
            raise StatusError("INVALID_ARGUMENT", f"option {name}='{v[:40]}' is not "
                                                  f"{'an integer' if cast is int else 'a number'}") from None
        if x == 0 and lo > 0 and cast is int:
            return  # 0 = the default
        if not lo <= x <= top:
            what = f" (this worker's thread budget)" if hi == "budget" else ""
            raise StatusError("INVALID_ARGUMENT", f"option {name}={x} is outside {lo}..{top}{what}")
    return check


def _path(name: str, v: str, budget: int) -> None:
    if "\x00" in v or len(v) > MAX_VALUE_CHARS:
        raise StatusError("INVALID_ARGUMENT", f"option {name} is not a valid path (NUL or longer than {MAX_VALUE_CHARS})")
    if ".." in v.replace("\\", "/").split("/"):
        raise StatusError("INVALID_ARGUMENT", f"option {name}='{v[:200]}' contains a '..' segment; name a file inside "
                                              f"a --model-dir or a built-in alias")


def _relative_file(name: str, v: str, budget: int) -> None:
    """A path relative to the model's own folder: plain segments, no '..', not absolute."""
    segs = v.split("/")
    if not v or v.startswith("/") or not all(_FILE_NAME.match(s) for s in segs) or len(v) > 1024:
        raise StatusError("INVALID_ARGUMENT", f"option {name}='{v[:200]}' must be a file path relative to the model's "
                                              f"folder (plain names separated by '/', no '..', not absolute)")


def _file_name(name: str, v: str, budget: int) -> None:
    if not _FILE_NAME.match(v):
        raise StatusError("INVALID_ARGUMENT", f"option {name}='{v[:200]}' must be a plain file name inside the model's "
                                              f"folder (no '/', no '..')")


ALLOWED: Dict[str, Callable] = {
    # routing
    "pool": _text(64), "device": _text(32),
    # LiteRT
    "path": _path, "alias": _text(256), "file_path": _relative_file, "content": _choice("frame"),
    "threads": _number(1, "budget"), "xnnpack": _boolean, "gpu_delegate": _boolean,
    "config": _text(MAX_CONFIG_CHARS),          # Triton clients' model config: accepted and ignored
    # transformers
    "dtype": _text(16), "raw_prompt": _boolean, "architecture": _text(128), "gguf_file": _file_name,
    "normalize": _boolean, "max_seq_length": _number(1, 32768), "max_batch": _number(1, 256),
    "max_wait_ms": _number(0, 1000, float),
    # speech
    "compute_type": _choice("", "auto", "default", "int8", "int8_float16", "int8_float32", "int8_bfloat16",
                            "int16", "float16", "float32", "bfloat16"),
    "num_workers": _number(1, "budget"), "beam_size": _number(1, 16), "max_new_tokens": _number(1, 4096),
    "language": _text(16),
}


def thread_budget(worker_options: dict) -> int:
    """The worker's thread budget (its --threads option, else the machine's cores)."""
    try:
        t = int((worker_options or {}).get("threads") or 0)
    except (TypeError, ValueError):
        t = 0
    return t if t > 0 else (os.cpu_count() or 1)


def check_load_options(options: dict, threads_budget: int) -> dict:
    """Raise StatusError for an operator-only, unknown or out-of-bounds option; return the options."""
    for name, value in (options or {}).items():
        if name in OPERATOR_ONLY:
            raise StatusError("PERMISSION_DENIED", f"option '{name}' is an operator setting, not a request option: "
                                                   f"start the service with {OPERATOR_ONLY[name]}")
        check = ALLOWED.get(name)
        if check is None:
            raise StatusError("INVALID_ARGUMENT", f"unknown load option '{str(name)[:64]}'; accepted options: "
                                                  f"{', '.join(sorted(ALLOWED))}")
        check(name, str(value), max(1, int(threads_budget)))
    return options
