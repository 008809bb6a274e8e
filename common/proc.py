"""Process lifecycle helpers: die with the parent, find the run folder, clean leftovers."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import tempfile
import threading
import time

PR_SET_PDEATHSIG = 1
RUN_DIR_PREFIX = "pythonml-"


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:
        pass


def watch_parent(on_orphan, interval: float = 0.5) -> threading.Thread:
    """Call on_orphan() once the original parent is gone (belt and braces next to PDEATHSIG)."""
    parent = os.getppid()

    def loop():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                on_orphan()
                return

    t = threading.Thread(target=loop, name="parent-watch", daemon=True)
    t.start()
    return t


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runtime_root() -> str:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return xdg
    return tempfile.gettempdir()


def make_run_dir() -> str:
    """A private (0700) folder for this run's ipc sockets and caches, named after our pid."""
    root = runtime_root()
    clean_stale_run_dirs(root)
    path = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=root)
    os.chmod(path, 0o700)
    return path


def clean_stale_run_dirs(root: str) -> int:
    """Remove run folders left by a tree that died without cleaning (owner pid gone)."""
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(RUN_DIR_PREFIX):
            continue
        try:
            pid = int(name[len(RUN_DIR_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        path = os.path.join(root, name)
        if pid != os.getpid() and not pid_alive(pid) and os.stat(path).st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def remove_run_dir(path: str) -> None:
    if path and os.path.basename(path).startswith(RUN_DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)
