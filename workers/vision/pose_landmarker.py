"""The BlazePose landmark model (pose_landmark_full.tflite) on a given region of interest.

MediaPipe's pose graph runs the landmark model on a rotated square ROI, either from the person
detector (first frame) or from the previous frame's auxiliary landmarks (tracking). The legacy
solution does this for one person; here it runs on any ROI, so each person of a frame gets their own.
Post-processing follows ``pose_landmark_by_roi_cpu.pbtxt`` and
``tensors_to_pose_landmarks_and_segmentation.pbtxt``:

- input: the ROI cut out at 256x256 (edge pixels replicated beyond the frame), values in [0, 1];
- pose presence flag (the model's own probability) >= 0.5, else no pose;
- 39 landmarks (x, y, z in 256-px crop units, visibility and presence logits -> sigmoid); x, y
  refined on the 64x64 heatmap (7x7 window, sigmoid weights, only where its peak >= 0.5);
- landmarks 0-32 are the pose, 33-34 the auxiliary points whose alignment (33 -> 34, square of side
  2 x distance x 1.25, rotated so 33 -> 34 points up) is the ROI for the next frame;
- projection to the frame: x, y through the ROI's rotation and scale, z x the ROI's side / frame width;
- world landmarks (metres, origin between the hips): 39 x 3, rotated by the ROI's rotation, with the
  image landmarks' visibility and presence.

The model file ships in the mediapipe wheel (``modules/pose_landmark/pose_landmark_full.tflite``, the
model_complexity=1 model, the only one the wheel holds) and runs in ai_edge_litert's Interpreter.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

from workers.vision import person_detector

INPUT = 256
HEATMAP_KERNEL = 7
HEATMAP_MIN = 0.5
PRESENCE_MIN = 0.5
ROI_SCALE = 1.25


def model_path() -> str:
    import mediapipe
    return os.path.join(os.path.dirname(mediapipe.__file__), "modules", "pose_landmark", "pose_landmark_full.tflite")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -80, 80)))


def roi_from_alignment(a: np.ndarray, b: np.ndarray, scale: float = ROI_SCALE) -> tuple[float, float, float, float]:
    """(cx, cy, side, rotation) pixels: square centred on ``a``, side 2 |ab| x scale, ``a -> b`` upright."""
    d = float(np.hypot(*(b - a)))
    rot = math.pi / 2 - math.atan2(-(b[1] - a[1]), b[0] - a[0])
    rot = (rot + math.pi) % (2 * math.pi) - math.pi
    return float(a[0]), float(a[1]), 2 * d * scale, rot


@dataclass
class Landmarks:
    image: np.ndarray        # (33, 3): x, y normalised to the frame, z on the frame-width scale
    visibility: np.ndarray   # (33,)
    presence: np.ndarray     # (33,)
    world: np.ndarray        # (33, 3) metres
    score: float             # the model's pose presence probability
    roi: tuple[float, float, float, float]        # the ROI it ran on (pixels)
    next_roi: tuple[float, float, float, float]   # the ROI for the next frame (from the auxiliary points)


def refine_with_heatmap(xy: np.ndarray, heatmap: np.ndarray, kernel: int = HEATMAP_KERNEL,
                        min_conf: float = HEATMAP_MIN) -> np.ndarray:
    """(N, 2) crop-normalised points refined on a (H, W, N) heatmap of logits (MediaPipe's rule)."""
    hh, hw, n = heatmap.shape
    out = xy.copy()
    off = (kernel - 1) // 2
    for i in range(n):
        col, row = int(xy[i, 0] * hw), int(xy[i, 1] * hh)
        if not (0 <= col < hw and 0 <= row < hh):
            continue
        r0, r1 = max(0, row - off), min(hh, row + off + 1)
        c0, c1 = max(0, col - off), min(hw, col + off + 1)
        conf = _sigmoid(heatmap[r0:r1, c0:c1, i])
        total = conf.sum()
        if conf.max() >= min_conf and total > 0:
            rows, cols = np.mgrid[r0:r1, c0:c1]
            out[i, 0] = (cols * conf).sum() / hw / total
            out[i, 1] = (rows * conf).sum() / hh / total
    return out


class PoseLandmarker:
    """One interpreter; ``run`` is serialised by a lock (the interpreter is not thread-safe)."""

    def __init__(self, threads: int = 1, path: Optional[str] = None):
        from ai_edge_litert.interpreter import Interpreter
        self._interp = Interpreter(model_path=path or model_path(), num_threads=max(1, int(threads)))
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()[0]["index"]
        outs = {tuple(o["shape"][1:]): o["index"] for o in self._interp.get_output_details()}
        self._lm, self._flag = outs[(195,)], outs[(1,)]
        self._heat, self._world = outs[(64, 64, 39)], outs[(117,)]
        self._lock = threading.Lock()

    def close(self) -> None:
        self._interp = None

    def run(self, rgb: np.ndarray, roi: tuple[float, float, float, float]) -> Optional[Landmarks]:
        """The pose in ``roi`` = (cx, cy, side, rotation radians), pixels of ``rgb``; None if absent."""
        h, w = rgb.shape[:2]
        cx, cy, side, rot = roi
        if side < 2:
            return None
        crop = person_detector.aligned_crop(rgb, cx, cy, side, rot, INPUT, replicate=True)
        x = (crop.astype(np.float32) / 255.0)[None]
        with self._lock:
            if self._interp is None:
                raise RuntimeError("PoseLandmarker is closed")
            self._interp.set_tensor(self._in, x)
            self._interp.invoke()
            flag = float(self._interp.get_tensor(self._flag).reshape(-1)[0])
            if flag < PRESENCE_MIN:
                return None
            raw = self._interp.get_tensor(self._lm).reshape(39, 5).astype(np.float64)
            heat = self._interp.get_tensor(self._heat)[0].copy()
            world = self._interp.get_tensor(self._world).reshape(39, 3).astype(np.float64)
        xy = refine_with_heatmap(raw[:, :2] / INPUT, heat)
        # crop-normalised -> frame pixels: rotate back by the ROI's rotation and scale
        u, v = (xy[:, 0] - 0.5) * side, (xy[:, 1] - 0.5) * side
        c, s = math.cos(rot), math.sin(rot)
        px = np.stack([cx + c * u - s * v, cy + s * u + c * v], axis=1)
        image = np.column_stack([px[:, 0] / w, px[:, 1] / h, raw[:, 2] / INPUT * side / w])
        wx, wy = world[:, 0], world[:, 1]
        world = np.column_stack([c * wx - s * wy, s * wx + c * wy, world[:, 2]])
        return Landmarks(image[:33], _sigmoid(raw[:33, 3]), _sigmoid(raw[:33, 4]), world[:33], flag, tuple(roi),
                         roi_from_alignment(px[33], px[34]))
