"""Measured RAM / VRAM of this process, and the delta a model load or unload really caused.

RAM is the process RSS after a full garbage collection and `malloc_trim(0)` (glibc keeps freed
arenas otherwise, so an unload would look like it returned nothing). VRAM is torch's allocated
bytes on the worker's CUDA device.
"""
from __future__ import annotations

import ctypes
import gc
import sys
from dataclasses import dataclass

import psutil

_libc = None


def release_free_memory(device: str = "cpu") -> None:
    """Collect garbage, return freed heap pages to the OS, and empty torch's CUDA cache."""
    global _libc
    gc.collect()
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


@dataclass
class Snapshot:
    ram_mb: float
    vram_mb: float


def snapshot(device: str = "cpu") -> Snapshot:
    release_free_memory(device)
    ram = psutil.Process().memory_info().rss / 2**20
    vram = 0.0
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_initialized():
        vram = torch.cuda.memory_allocated(device) / 2**20
    return Snapshot(ram, vram)


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """after - before (positive: memory taken; for an unload pass (after, before) to get what was freed)."""
    return Snapshot(after.ram_mb - before.ram_mb, after.vram_mb - before.vram_mb)
