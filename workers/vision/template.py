"""Template matching with OpenCV: every match above the threshold, overlapping matches merged.

Normalised cross-correlation (TM_CCOEFF_NORMED, on grey levels: 1.0 = identical) over the whole
frame; candidates are the local maxima of the score map at or above the threshold (default 0.8);
overlapping candidates (IoU > max_overlap, default 0.3) are merged into the best-scoring one (NMS);
at most max_matches (default 100) are returned, best first. x, y are the top-left corner of the
match in pixels of the frame; width/height the template's size.
"""
from __future__ import annotations

import cv2
import numpy as np

from workers.context import WorkerError
from workers.vision import frames
from workers.vision.mesh import iou


def infer_format(data, fmt: str, width: int, height: int) -> str:
    if fmt:
        return fmt
    s = frames.sniff(data) if data is not None and len(data) >= 8 else ""
    if s:
        return s
    if width > 0 and height > 0 and data is not None:
        n = len(data)
        for name, ch in (("rgb", 3), ("gray", 1), ("rgba", 4)):
            if n == width * height * ch:
                return name
    return "rgb"


def match(frame: np.ndarray, template: np.ndarray, threshold: float = 0.8, max_matches: int = 100,
          max_overlap: float = 0.3, what: str = "frame") -> list[tuple[float, float, float, float, float]]:
    """[(x, y, w, h, score)] in pixels, best first."""
    fh, fw = frame.shape[:2]
    th, tw = template.shape[:2]
    if th > fh or tw > fw:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: the template ({tw}x{th}) is larger than the frame ({fw}x{fh})")
    g = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    t = cv2.cvtColor(template, cv2.COLOR_RGB2GRAY)
    if float(t.std()) < 1e-6:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: the template is a uniform colour; it cannot be matched")
    res = cv2.matchTemplate(g, t, cv2.TM_CCOEFF_NORMED)
    res = np.nan_to_num(res, nan=-1.0, posinf=-1.0, neginf=-1.0)
    peak = cv2.dilate(res, np.ones((3, 3), np.uint8))
    ys, xs = np.nonzero((res >= threshold) & (res >= peak))
    if len(ys) == 0:
        return []
    scores = res[ys, xs]
    order = np.argsort(-scores)
    if len(order) > 20 * max_matches:
        order = order[:20 * max_matches]
    kept: list[tuple] = []
    for i in order:
        box = (float(xs[i]), float(ys[i]), float(tw), float(th))
        if all(iou(box, k[:4]) <= max_overlap for k in kept):
            kept.append((*box, float(scores[i])))
            if len(kept) >= max_matches:
                break
    return kept
