"""MediaPipe legacy solution instances: a locked static-mode pool for unary calls, per-stream instances.

MediaPipe solution graphs are not thread-safe. Unary calls (DetectFaces/Hands/Pose) borrow a
static-image-mode instance from a small pool (one caller per instance at a time; a new instance is
built when all are busy, up to ``max_per_kind``). A stream owns its own tracking-mode instances,
kept in ``ctx.stream_state`` and closed when the stream ends (every value there with ``close()``).
The models ship inside the mediapipe 0.10.21 wheel: nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable

KINDS = ("face_detection_short", "face_detection_full", "face_mesh", "hands", "pose", "holistic",
         "selfie", "selfie_landscape")


def create(kind: str, static: bool, **opts):
    """Build one MediaPipe solution instance. ``static``: independent images (no tracking)."""
    if kind in ("face_detection_short", "face_detection_full"):
        from mediapipe.python.solutions import face_detection
        return face_detection.FaceDetection(
            min_detection_confidence=opts.get("min_detection_confidence", 0.5),
            model_selection=0 if kind.endswith("short") else 1)
    if kind == "face_mesh":
        from mediapipe.python.solutions import face_mesh
        return face_mesh.FaceMesh(static_image_mode=static, max_num_faces=opts.get("max_faces", 4),
                                  refine_landmarks=True,
                                  min_detection_confidence=opts.get("min_detection_confidence", 0.5),
                                  min_tracking_confidence=opts.get("min_tracking_confidence", 0.5))
    if kind == "hands":
        from mediapipe.python.solutions import hands
        return hands.Hands(static_image_mode=static, max_num_hands=opts.get("max_hands", 2), model_complexity=1,
                           min_detection_confidence=opts.get("min_detection_confidence", 0.5),
                           min_tracking_confidence=opts.get("min_tracking_confidence", 0.5))
    if kind == "pose":
        from mediapipe.python.solutions import pose
        # model_complexity=1 is the only pose landmark model shipped inside the wheel.
        return pose.Pose(static_image_mode=static, model_complexity=1, smooth_landmarks=not static,
                         enable_segmentation=False,
                         min_detection_confidence=opts.get("min_detection_confidence", 0.5),
                         min_tracking_confidence=opts.get("min_tracking_confidence", 0.5))
    if kind == "holistic":
        from mediapipe.python.solutions import holistic
        return holistic.Holistic(static_image_mode=static, model_complexity=1, smooth_landmarks=not static,
                                 refine_face_landmarks=True,
                                 min_detection_confidence=opts.get("min_detection_confidence", 0.5),
                                 min_tracking_confidence=opts.get("min_tracking_confidence", 0.5))
    if kind in ("selfie", "selfie_landscape"):
        from mediapipe.python.solutions import selfie_segmentation
        return selfie_segmentation.SelfieSegmentation(model_selection=0 if kind == "selfie" else 1)
    raise ValueError(f"unknown MediaPipe solution kind {kind!r}")


class StaticPool:
    """Static-mode instances shared by unary calls; each instance serves one caller at a time."""

    def __init__(self, max_per_kind: int = 2, factory: Callable = create):
        self._factory = factory
        self._max = max(1, max_per_kind)
        self._cond = threading.Condition()
        self._free: dict[str, list] = {}
        self._count: dict[str, int] = {}
        self._all: list = []

    @contextlib.contextmanager
    def acquire(self, kind: str):
        inst = None
        with self._cond:
            while True:
                free = self._free.setdefault(kind, [])
                if free:
                    inst = free.pop()
                    break
                if self._count.get(kind, 0) < self._max:
                    self._count[kind] = self._count.get(kind, 0) + 1
                    break
                self._cond.wait()
        if inst is None:
            try:
                inst = self._factory(kind, True)
            except BaseException:
                with self._cond:
                    self._count[kind] -= 1
                    self._cond.notify()
                raise
            with self._cond:
                self._all.append(inst)
        try:
            yield inst
        finally:
            with self._cond:
                self._free[kind].append(inst)
                self._cond.notify()

    def warm(self, *kinds: str) -> None:
        for k in kinds:
            with self.acquire(k):
                pass

    def close(self) -> None:
        with self._cond:
            insts, self._all = self._all, []
            self._free.clear()
            self._count.clear()
        for inst in insts:
            with contextlib.suppress(Exception):
                inst.close()


def stream_solution(state: dict, kind: str, **opts):
    """The stream's own tracking-mode instance of ``kind`` (created on first use, closed at stream end)."""
    key = "mp:" + kind
    inst = state.get(key)
    if inst is None:
        inst = create(kind, False, **opts)
        state[key] = inst
    return inst
