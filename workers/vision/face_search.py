"""DetectFaces on ordinary photos: both BlazeFace models, tiles for small faces, every box verified.

One BlazeFace pass misses faces outside its range: the short-range model (128 px input) only sees
faces that fill a good part of the frame; the full-range one (192 px input) stops at faces of about
6 % of the image side, so a 45 px face in a 640 px photo, or a 100 px face in a 2560 px group photo,
is lost. Either model alone also reports things that are not faces (a hand at 0.72, a blurred patch).

``search`` therefore:

1. collects candidates: each requested model on the whole image, and (when the full-range model is
   requested) the full-range model on overlapping square tiles, a pyramid from ``TILE`` px upwards
   (each level twice the side of the one below, ``TILE_OVERLAP`` of a tile shared with its
   neighbour, so every face between ~25 px and the whole-image pass's range lies wholly inside a tile
   of a level that sees it at a usable scale);
2. verifies each distinct candidate: a square crop centred on its box, ``VERIFY_CONTEXT`` times the
   box's side, resized to ``VERIFY_SIDE`` px, so the face is at the scale both models work best at;
   both models run on the crop and the candidate stands only if *each* finds a face on it that
   overlaps the candidate's box (IoU >= ``VERIFY_IOU``) with score >= ``VERIFY_MIN``;
3. merges the verified boxes: greedy NMS by score, a box overlapping a kept one (IoU >
   ``SAME_FACE_IOU``, or lying mostly inside it / containing it: intersection over the smaller box >
   ``SAME_FACE_CONTAINED``) is the same face.

Why two models on the crop: detector scores alone do not separate faces from the rest (false boxes
at 0.55-0.72 on a hand, a flag, a uniform, the out-of-focus crowd; real small faces from 0.63). On
the crop, every false box got 0 from at least one model (the best single-model score on a false
crop was 0.65), while every real face (frontal or three-quarter, 30-420 px) was confirmed by both,
the lower of the two scores >= 0.66; ``VERIFY_MIN`` = 0.5 sits in that gap. The cost: a face only
one model can see (a face turned away in profile) is not reported.

Boxes and keypoints come from the candidate that was kept (the detector's own box and score).
Solutions are borrowed one kind at a time through ``acquire(kind)`` (a context manager: the
worker's locked static pool, or a stream's own instances), never two at once, so callers cannot
deadlock on the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Optional

import cv2
import numpy as np

from workers.vision.faces import FULL, SHORT, Face

TILE = 384                  # smallest tile side: 2x the full-range input, faces down to ~25 px
TILE_OVERLAP = 0.25
TILE_INPUT = 384            # tiles larger than this are shrunk (INTER_AREA) before the model sees them
VERIFY_CONTEXT = 2.5
VERIFY_SIDE = 256
VERIFY_IOU = 0.4
VERIFY_MIN = 0.5
SAME_CANDIDATE_IOU = 0.7    # candidates this alike share one verification
SAME_FACE_IOU = 0.3
SAME_FACE_CONTAINED = 0.6


@dataclass
class Candidate:
    box: tuple[float, float, float, float]      # x, y, w, h in pixels of the image
    score: float
    keypoints: list[tuple[float, float]]        # pixels
    source: str                                 # e.g. "short", "full", "full/tile384"


def run_model(solution, img: np.ndarray, dx: float = 0.0, dy: float = 0.0, sx: float = 1.0, sy: float = 1.0,
              source: str = "") -> list[Candidate]:
    """One pass on ``img``; boxes mapped to the caller's pixels (x * sx + dx, y * sy + dy), unclipped."""
    h, w = img.shape[:2]
    out = []
    for det in solution.process(img).detections or []:
        rb = det.location_data.relative_bounding_box
        box = (rb.xmin * w * sx + dx, rb.ymin * h * sy + dy, rb.width * w * sx, rb.height * h * sy)
        if box[2] <= 0 or box[3] <= 0:
            continue
        kps = [(k.x * w * sx + dx, k.y * h * sy + dy) for k in det.location_data.relative_keypoints]
        out.append(Candidate(box, float(det.score[0]) if det.score else 0.0, kps, source))
    return out


def tiles(height: int, width: int, smallest: int = TILE, overlap: float = TILE_OVERLAP) -> list[tuple[int, int, int]]:
    """Square tiles (x, y, side), a pyramid from ``smallest`` up; none for images the whole pass covers.

    A level of side T is used while T < 0.75 x the image's longer side; tiles step by (1 - overlap) T
    and the last row/column is aligned with the image edge. Tiles are clipped to the image.
    """
    out = []
    side = smallest
    longest = max(height, width)
    while side < 0.75 * longest:
        step = max(1, int(side * (1.0 - overlap)))
        xs = _starts(width, side, step)
        ys = _starts(height, side, step)
        out += [(x, y, side) for y in ys for x in xs]
        side *= 2
    return out


def _starts(length: int, side: int, step: int) -> list[int]:
    if length <= side:
        return [0]
    s = list(range(0, length - side + 1, step))
    if s[-1] + side < length:
        s.append(length - side)
    return s


def iou(a, b) -> float:
    inter = _inter(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _inter(a, b) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def same_face(a, b) -> bool:
    """Two boxes of one face: IoU > SAME_FACE_IOU, or one mostly inside the other."""
    if iou(a, b) > SAME_FACE_IOU:
        return True
    small = min(a[2] * a[3], b[2] * b[3])
    return small > 0 and _inter(a, b) / small > SAME_FACE_CONTAINED


def verify_crop(rgb: np.ndarray, box) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The square check crop around ``box`` (black beyond the image) and the box in crop pixels."""
    x, y, w, h = box
    side = max(w, h) * VERIFY_CONTEXT
    s = VERIFY_SIDE / side
    cx, cy = x + w / 2, y + h / 2
    m = np.float32([[s, 0, VERIFY_SIDE / 2 - cx * s], [0, s, VERIFY_SIDE / 2 - cy * s]])
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(rgb, m, (VERIFY_SIDE, VERIFY_SIDE), flags=interp,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return crop, (VERIFY_SIDE / 2 - w * s / 2, VERIFY_SIDE / 2 - h * s / 2, w * s, h * s)


def confirm_score(solution, crop: np.ndarray, box_in_crop) -> float:
    """Best score of a detection on the crop that overlaps the candidate's box (0 if none)."""
    best = 0.0
    for c in run_model(solution, crop):
        if iou(c.box, box_in_crop) >= VERIFY_IOU:
            best = max(best, c.score)
    return best


def candidates(acquire: Callable[[str], ContextManager], rgb: np.ndarray, kinds: Iterable[str],
               tile: bool = True, check: Optional[Callable[[], None]] = None) -> list[Candidate]:
    kinds = tuple(kinds)
    out: list[Candidate] = []
    for kind in kinds:
        with acquire(kind) as sol:
            out += run_model(sol, rgb, source="short" if kind == SHORT else "full")
    if tile and FULL in kinds:
        h, w = rgb.shape[:2]
        with acquire(FULL) as sol:
            for x, y, side in tiles(h, w):
                if check is not None:
                    check()
                sub = rgb[y:y + side, x:x + side]
                th, tw = sub.shape[:2]
                if max(th, tw) > TILE_INPUT:
                    f = TILE_INPUT / max(th, tw)
                    sub = cv2.resize(sub, (max(1, round(tw * f)), max(1, round(th * f))), interpolation=cv2.INTER_AREA)
                out += run_model(sol, np.ascontiguousarray(sub), x, y, tw / sub.shape[1], th / sub.shape[0],
                                 f"full/tile{side}")
    return out


def verify(acquire: Callable[[str], ContextManager], rgb: np.ndarray, cands: list[Candidate],
           check: Optional[Callable[[], None]] = None) -> list[tuple[Candidate, float, float]]:
    """[(candidate, short score on its crop, full score on its crop)] for the distinct candidates."""
    distinct: list[Candidate] = []
    for c in sorted(cands, key=lambda c: -c.score):
        if all(iou(c.box, d.box) <= SAME_CANDIDATE_IOU for d in distinct):
            distinct.append(c)
    crops = [verify_crop(rgb, c.box) for c in distinct]
    scores = {}
    for kind in (SHORT, FULL):
        if check is not None:
            check()
        with acquire(kind) as sol:
            scores[kind] = [confirm_score(sol, crop, b) for crop, b in crops]
    return [(c, scores[SHORT][i], scores[FULL][i]) for i, c in enumerate(distinct)]


def merge(verified: list[Candidate]) -> list[Candidate]:
    kept: list[Candidate] = []
    for c in sorted(verified, key=lambda c: -c.score):
        if not any(same_face(c.box, k.box) for k in kept):
            kept.append(c)
    return kept


def to_face(c: Candidate, width: int, height: int) -> Optional[Face]:
    x0, y0 = max(0.0, c.box[0] / width), max(0.0, c.box[1] / height)
    x1, y1 = min(1.0, (c.box[0] + c.box[2]) / width), min(1.0, (c.box[1] + c.box[3]) / height)
    if x1 <= x0 or y1 <= y0:
        return None
    return Face((x0, y0, x1 - x0, y1 - y0), c.score, [(x / width, y / height) for x, y in c.keypoints])


def search(acquire: Callable[[str], ContextManager], rgb: np.ndarray, kinds: Iterable[str] = (SHORT, FULL),
           tile: bool = True, check: Optional[Callable[[], None]] = None) -> list[Face]:
    """Every verified face, highest score first (see the module docstring)."""
    cands = candidates(acquire, rgb, kinds, tile, check)
    if not cands:
        return []
    checked = verify(acquire, rgb, cands, check)
    good = [c for c, s_short, s_full in checked if min(s_short, s_full) >= VERIFY_MIN]
    h, w = rgb.shape[:2]
    found = [f for f in (to_face(c, w, h) for c in merge(good)) if f is not None]
    found.sort(key=lambda f: -f.score)
    return found
