"""Vision worker: MediaPipe legacy solutions (bundled in the mediapipe 0.10.21 wheel) + OpenCV.

Started by run.py as ``python -m workers.vision_worker --pool vision --device cpu ...``. The handlers
live in workers/vision/service.py (one small module per capability under workers/vision/); this
module connects them to the worker base: thread budget, warm-up before READY, clean close.
Unary calls use a locked pool of static-image instances; each stream owns tracking-mode instances
in its stream state, closed by the base when the stream ends.
"""
from __future__ import annotations

import gc
import os

from workers.base import Worker, run_worker_main
from workers.vision import native_memory
from workers.vision.image_header import MAX_PIXELS

# OpenCV's own header pass refuses bigger images too (a second line behind image_header.py). OpenCV
# reads this once, when cv2 is first imported: nothing above imports it.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
# OpenCV's pthreads pool: a thread out of work sleeps at once instead of spinning (sched_yield) for the
# next job, also read once at import. Its jobs here are small (a frame's colour conversion, 0.07 ms at
# 640x480), and a spinning thread takes the cores the facade, the broker and the other stages of a stream
# need: about 0.4 ms of CPU per H.264 frame (bench_vision, face detection).
for _wait in ("OPENCV_THREAD_POOL_ACTIVE_WAIT_WORKER", "OPENCV_THREAD_POOL_ACTIVE_WAIT_MAIN"):
    os.environ.setdefault(_wait, "0")

# glibc malloc: 2 arenas; blocks of 16 MiB or more (bigger than a 1080p RGBA frame) mapped on their own.
# See workers/vision/native_memory.py: without them RSS creeps up with every stream opened and closed.
MALLOC_ARENAS = 2
MMAP_THRESHOLD = 16 * 2**20


class VisionWorker(Worker):
    pool = "vision"
    capacity = 2   # concurrent requests (different streams / unary calls); MediaPipe instances are never shared

    def setup(self) -> None:
        self.capacity = int(self.options.get("capacity") or self.capacity)
        native_memory.configure(MALLOC_ARENAS, MMAP_THRESHOLD)   # before the first MediaPipe thread starts
        threads = int(self.options.get("threads") or 0)
        if threads > 0:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import cv2
        if threads > 0:
            cv2.setNumThreads(threads)
        from workers.vision.service import VisionService
        self.service = VisionService(self.options, pool_size=self.capacity)
        if self.options.get("auto_load", True):
            try:
                self.service.warm()   # load the common models before READY, not on the first request
            except Exception as exc:  # a warm-up failure must not keep the pool down; requests will report it
                self.log.error("vision warm-up failed: %s", exc)

    def handlers(self) -> dict:
        return self.service.handlers()

    def on_stream_close(self, stream_id: str, state: dict) -> None:
        native_memory.trim()   # the stream's MediaPipe graphs were just freed: give their pages back

    def on_idle(self) -> None:
        # frames and graphs freed by other threads after the last stream's close (a cancelled stream's
        # decode one frame ahead, a reply's buffers) sit below the trim threshold until the next trim; a
        # cancelled frame's exception holds its traceback's frames (and their arrays) in a cycle until the
        # cyclic collector runs: collect first, so their memory is free when trimmed
        gc.collect()
        native_memory.trim()


if __name__ == "__main__":
    run_worker_main(VisionWorker)
