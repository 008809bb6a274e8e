"""glibc malloc settings for the vision worker: few arenas, fixed mmap and trim thresholds, pages handed
back after a stream.

MediaPipe builds a calculator graph (with its own threads) per stream and frees it at the stream's end.
With glibc's defaults (8 arenas per core, an mmap threshold that rises as big blocks are freed), those
short-lived threads spread their allocations over many arenas whose freed space is rarely returned:
the worker's RSS climbs with the number of streams opened although nothing is leaked (measured: +150 MB
over 3,600 streams). Capping the arenas and fixing the threshold before the first MediaPipe thread
starts, and trimming after a stream's instances are closed, keep it flat (within 1-2 %).
Fixing the mmap threshold also freezes glibc's trim threshold at its 128 KiB start value (glibc only
raises it, to twice the mmap threshold, while the threshold is dynamic): every frame's buffers (a 640x480
RGB frame is 900 KiB) were then given back to the kernel when freed and faulted in again by the next
frame, about 200 page faults and 0.3 ms per H.264 frame (bench_vision, face detection). `configure` sets
the trim threshold to what glibc's own rule would give (twice the mmap threshold), so the free space at
a heap's top is kept between frames; `trim()` after a stream still hands every free page back.
Every function is a no-op returning False off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Optional

M_TRIM_THRESHOLD = -1   # glibc malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

_lock = threading.Lock()
_libc: Optional[ctypes.CDLL] = None
_loaded = False


def _glibc() -> Optional[ctypes.CDLL]:
    global _libc, _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if all(hasattr(lib, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
                    _libc = lib
            except OSError:
                _libc = None
        return _libc


def configure(arenas: int, mmap_threshold: int) -> bool:
    """At most `arenas` malloc arenas from now on (threads share them); blocks of `mmap_threshold` bytes
    or more are mapped on their own and unmapped when freed; free space at a heap's top is kept up to
    twice that (glibc's own rule) instead of returned on every free. True if glibc accepted all three."""
    lib = _glibc()
    if lib is None:
        return False
    return (lib.mallopt(M_ARENA_MAX, int(arenas)) == 1 and lib.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
            and lib.mallopt(M_TRIM_THRESHOLD, 2 * int(mmap_threshold)) == 1)


def trim() -> bool:
    """Return the free heap pages of every arena to the system. True if memory was released."""
    lib = _glibc()
    return bool(lib is not None and lib.malloc_trim(0))
