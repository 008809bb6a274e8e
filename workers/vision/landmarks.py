"""Conversion of MediaPipe landmark lists to `ml.Landmark` messages and numpy arrays.

Image landmarks are normalised to [0, 1] of the frame's width/height (z on the scale of x);
world landmarks are metres. visibility/presence are copied where the model provides them.
"""
from __future__ import annotations

import numpy as np

from protos import ml_inference_pb2 as pb


def fill(dst, landmark_list) -> None:
    """Append every landmark of a MediaPipe NormalizedLandmarkList/LandmarkList to a repeated Landmark."""
    for lm in landmark_list.landmark:
        m = dst.add()
        m.x, m.y, m.z = lm.x, lm.y, lm.z
        if lm.HasField("visibility"):
            m.visibility = lm.visibility
        if lm.HasField("presence"):
            m.presence = lm.presence


def to_array(landmark_list) -> np.ndarray:
    """(N, 3) float array of x, y, z."""
    return np.array([(lm.x, lm.y, lm.z) for lm in landmark_list.landmark], dtype=np.float64)


def visibility(landmark_list) -> np.ndarray:
    return np.array([lm.visibility for lm in landmark_list.landmark], dtype=np.float64)


def to_pixels(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised (N,3) -> pixel-scaled (N,3): x*width, y*height, z*width (MediaPipe's z scale)."""
    out = arr.copy()
    out[:, 0] *= width
    out[:, 1] *= height
    out[:, 2] *= width
    return out


def bbox_of(arr: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, w, h) normalised box around landmarks, clipped to the frame."""
    x0, y0 = np.clip(arr[:, 0].min(), 0, 1), np.clip(arr[:, 1].min(), 0, 1)
    x1, y1 = np.clip(arr[:, 0].max(), 0, 1), np.clip(arr[:, 1].max(), 0, 1)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def landmark_msgs(arr: np.ndarray) -> list:
    return [pb.Landmark(x=float(a[0]), y=float(a[1]), z=float(a[2])) for a in arr]
