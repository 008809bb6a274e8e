"""workers/vision/native_memory.py: the vision worker's malloc settings keep a frame's buffers between frames.

With the mmap threshold fixed, glibc's trim threshold stayed at 128 KiB, so a freed 900 KiB frame buffer went
back to the kernel at once and the next frame faulted its pages in again (about 225 page faults per 640x480
RGB frame). Counted in a fresh interpreter (mallopt is process-wide): page faults of 200 allocate-fill-free
rounds of a frame-sized buffer, after configure().
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROUNDS = """
import resource, sys
import numpy as np
from workers.vision import native_memory
configured = native_memory.configure(2, 16 * 2**20) if sys.argv[1] == "configure" else None
def rounds(n):
    for _ in range(n):
        a = np.empty(640 * 480 * 3, np.uint8)
        a.fill(1)
        del a
rounds(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(200)
print(configured, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    configured, count = out.stdout.split()
    return configured, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_frame_buffers_are_not_faulted_in_again_every_frame():
    configured, count = faults("configure")
    assert configured == "True"
    # one 900 KiB buffer is 225 pages: a round that hands it back to the kernel costs that many faults
    assert count < 200, f"{count} page faults in 200 rounds"
