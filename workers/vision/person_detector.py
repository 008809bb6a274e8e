"""BlazePose person detector (MediaPipe's pose_detection.tflite) with its SSD anchors decoded here.

The model ships inside the mediapipe wheel (``mediapipe/modules/pose_detection/pose_detection.tflite``)
and runs in ai_edge_litert's Interpreter (threads from the worker's budget). Pre- and post-processing
follow MediaPipe's ``pose_detection_cpu.pbtxt``:

- the frame is letterboxed (aspect kept, black borders) into 224x224, values scaled to [-1, 1];
- 2254 SSD anchors: ``SsdAnchorsCalculator`` with 5 layers, strides 8/16/32/32/32, aspect ratio 1 plus
  the interpolated scale (2 anchors per cell; the three stride-32 layers share one 7x7 grid), fixed
  anchor size, offsets 0.5;
- raw tensor (2254, 12): box centre x, y, w, h then 4 keypoints (x, y), each divided by 224 and
  added to the anchor centre; scores clipped to +-100 and passed through a sigmoid;
- weighted non-maximum suppression (IoU > 0.3 -> one detection, boxes and keypoints averaged by score,
  the best score kept), then the letterbox is removed.

The model's own box is around the **head** (MediaPipe calls it the face box); the body comes from the
keypoints: 0 = mid-hip centre, 1 = a point whose distance from 0 gives the full body's size and whose
direction its rotation, 2 = mid-shoulder centre, 3 = the same for the upper body. MediaPipe's pose
landmark graph aligns its region of interest on keypoints 0 -> 1 (a square of side 2 x distance,
centred on the hip, rotated so the body points up) and enlarges it 1.25x; ``Person.box`` is that
square before the enlargement (it holds the whole person whatever the rotation, so it is wider than a
standing person), clipped to the frame; ``Person.roi`` gives the enlarged, rotated square.

What ``detect`` adds to one pass (measured on the test photos and OpenCV's vtest.avi street video):

- **verification**: a score >= 0.5 on the whole frame is not enough (a cartoon fish 0.53, a hand
  0.54); each candidate is run again on its own aligned crop (the body ROI, or the shoulders' ROI when
  the hips lie outside the frame) and stands only if the detector finds it there again, centred, with
  ``min_score`` (real people 0.73-0.98 on their crops, the fish 0.39, the hand 0);
- **windows** (``windows=True``, the default): the model, made for one person, scores a second
  large person low when another one fills the frame (messi5 and basketball1's man side by side:
  the man < 0.05 on the whole frame, 0.91 alone in a window); on a frame that is not square it also
  runs on squares as high (wide) as the frame, sliding by half a side (2-3 more passes); a window's
  detection counts when most of the person lies inside that window and the person is large (body
  square at least half the window: the people windows are for measure 0.58-0.9 of it; on vtest.avi,
  frames 113-116, a window took three small walkers by the lamp post for one person of 0.34-0.43,
  verified on its crop at 0.56-0.65);
- **tiles** (``tiles=True``): people under ~1/5 of the frame height are too small for the 224 px
  input (vtest.avi: none of 3-7 walkers found on the whole frame); the model also runs on a two-level
  pyramid of overlapping square tiles (1/2 and 1/3 of the frame's shorter side). A tile's detection
  counts only if the person is small in the tile and mostly inside it (a large person cut by a tile
  edge makes the model see a "person" in each piece). ``detect_people`` picks tiles or not from the
  ``person_tiles`` choice (``auto``: tiles on frames of 384 px or more that show nobody half as tall).

Detections of one person from several passes (whose scales differ) are merged on their shoulder and
hip centres, the best score kept; then every one is verified as above.

The detector keys on the head: a person whose face is turned away (basketball1's right man, walkers
seen from behind) scores low (0.15) and is not reported.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

INPUT = 224
NUM_BOXES = 2254
STRIDES = (8, 16, 32, 32, 32)
NMS_IOU = 0.3
SCORE_CLIP = 100.0
ROI_SCALE = 1.25              # MediaPipe's pose_detection_to_roi enlargement
TILE_FRACTIONS = (0.5, 0.33)  # tile sides / the frame's shorter side (a two-level pyramid)
TILE_OVERLAP = 0.35
WINDOW_OVERLAP = 0.5          # frame-high square windows (people the whole-frame pass misses), step = half a side
WINDOW_MIN_REL = 0.5          # a window's person: body square >= this x the window side (large people only)
MIN_TILE = 96                 # px: smaller tiles are not run
TILE_MAX_REL = 0.75           # a tile's person: body square <= this x the tile side ...
TILE_MIN_INSIDE = 0.5         # ... and at least this share of it inside the tile
SAME_SHOULDER, SAME_HIP = 0.35, 0.5   # x the smaller body half-size: two detections whose shoulder and
                                      # hip centres are this close are one person (passes disagree on scale)
VERIFY_HIP_MARGIN = 0.1       # hip within the frame (+- this): verify on the body crop, else on the upper-body crop
VERIFY_CENTRE_TOL = 0.15      # the crop's detection must put its centre keypoint this close to the crop centre
AUTO_TILES_MIN_SIDE = 384     # px: person_tiles=auto runs tiles on frames whose shorter side is at least this ...
AUTO_TILES_TALL = 0.5         # ... unless the whole frame already shows a person this tall (share of the frame)
TILE_MODES = ("auto", "on", "off")
KEYPOINT_NAMES = ("hip_center", "body_scale", "shoulder_center", "upper_body_scale")


def model_path() -> str:
    import mediapipe
    return os.path.join(os.path.dirname(mediapipe.__file__), "modules", "pose_detection", "pose_detection.tflite")


def anchors() -> np.ndarray:
    """(2254, 2) anchor centres (x, y), normalised; SsdAnchorsCalculator with the graph's options."""
    out = []
    layer = 0
    n = len(STRIDES)
    while layer < n:
        per_cell = 0
        last = layer
        while last < n and STRIDES[last] == STRIDES[layer]:
            per_cell += 2          # aspect ratio 1.0 + the interpolated scale (fixed_anchor_size: w = h = 1)
            last += 1
        side = math.ceil(INPUT / STRIDES[layer])
        for y in range(side):
            for x in range(side):
                out += [((x + 0.5) / side, (y + 0.5) / side)] * per_cell
        layer = last
    a = np.array(out, dtype=np.float32)
    assert len(a) == NUM_BOXES, len(a)
    return a


@dataclass
class Person:
    box: tuple[float, float, float, float]          # x0, y0, x1, y1 normalised (body square, clipped)
    score: float
    keypoints: list[tuple[float, float]]            # 4 normalised points, see KEYPOINT_NAMES
    face_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)   # the model's own box (head), x0, y0, x1, y1
    source: str = "frame"                           # "frame" or "tile<side>": the pass that found it

    def roi(self, width: int, height: int, scale: float = ROI_SCALE,
            upper_body: bool = False) -> tuple[float, float, float, float]:
        """(cx, cy, side, rotation radians) in pixels: MediaPipe's aligned, enlarged square ROI
        (keypoints 0 -> 1; ``upper_body``: 2 -> 3, the square around the shoulders)."""
        i = 2 if upper_body else 0
        (hx, hy), (sx, sy) = self.keypoints[i], self.keypoints[i + 1]
        hx, hy, sx, sy = hx * width, hy * height, sx * width, sy * height
        d = math.hypot(sx - hx, sy - hy)
        # rotation so that the hip -> scale point vector points up (target angle 90 degrees)
        rot = math.pi / 2 - math.atan2(-(sy - hy), sx - hx)
        rot = (rot + math.pi) % (2 * math.pi) - math.pi
        return hx, hy, 2 * d * scale, rot


@dataclass(eq=False)
class _Raw:
    box: np.ndarray        # x0, y0, x1, y1 (the model's head box), normalised
    kps: np.ndarray        # (4, 2) normalised
    score: float
    source: str = "frame"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def weighted_nms(dets: list[_Raw], threshold: float = NMS_IOU) -> list[_Raw]:
    """MediaPipe's WEIGHTED non-max suppression: overlapping detections averaged by score."""
    remaining = sorted(dets, key=lambda d: -d.score)
    out = []
    while remaining:
        top = remaining[0]
        group = [d for d in remaining if _iou(top.box, d.box) > threshold]
        remaining = [d for d in remaining if _iou(top.box, d.box) <= threshold]
        if not any(d is top for d in group):     # a degenerate (empty) box: keep it alone
            group.insert(0, top)
            remaining = [d for d in remaining if d is not top]
        w = np.array([d.score for d in group], dtype=np.float64)
        w /= w.sum()
        box = sum(wi * d.box for wi, d in zip(w, group))
        kps = sum(wi * d.kps for wi, d in zip(w, group))
        out.append(_Raw(np.asarray(box), np.asarray(kps), top.score, top.source))
    return out


def window_grid(height: int, width: int) -> list[tuple[int, int, int]]:
    """Square windows (x, y, side) as tall (or wide) as the frame, sliding along its longer side by
    (1 - WINDOW_OVERLAP) of the side; none for a frame about square."""
    side = min(height, width)
    if max(height, width) < 1.1 * side:
        return []
    step = max(1, int(side * (1 - WINDOW_OVERLAP)))
    length = max(height, width)
    starts = list(range(0, length - side + 1, step))
    if starts[-1] + side < length:
        starts.append(length - side)
    return [(x, 0, side) if width > height else (0, x, side) for x in starts]


def tile_grid(height: int, width: int) -> list[tuple[int, int, int]]:
    """Overlapping square tiles (x, y, side): for each of TILE_FRACTIONS of the shorter side (tiles of
    at least MIN_TILE px), a grid stepping by (1 - TILE_OVERLAP) of the side, last row/column on the edge."""
    out = []
    for frac in TILE_FRACTIONS:
        side = int(min(height, width) * frac)
        if side < MIN_TILE:
            continue
        step = max(1, int(side * (1 - TILE_OVERLAP)))

        def starts(length: int) -> list[int]:
            s = list(range(0, length - side + 1, step))
            if s[-1] + side < length:
                s.append(length - side)
            return s
        out += [(x, y, side) for y in starts(height) for x in starts(width)]
    return out


class PersonDetector:
    """One interpreter; ``detect`` is serialised by a lock (the interpreter is not thread-safe)."""

    def __init__(self, threads: int = 1, path: Optional[str] = None):
        from ai_edge_litert.interpreter import Interpreter
        self._interp = Interpreter(model_path=path or model_path(), num_threads=max(1, int(threads)))
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()[0]
        self._in = inp["index"]
        outs = self._interp.get_output_details()
        self._boxes = next(o["index"] for o in outs if o["shape"][-1] == 12)
        self._scores = next(o["index"] for o in outs if o["shape"][-1] == 1)
        self._anchors = anchors()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._interp = None

    # ------------------------------------------------------------ one pass
    def _letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float, float, float]:
        """224x224 float tensor in [-1, 1] and the letterbox (pad_x, pad_y, scale_x, scale_y) fractions."""
        h, w = rgb.shape[:2]
        s = INPUT / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        small = cv2.resize(rgb, (nw, nh), interpolation=interp)
        canvas = np.zeros((INPUT, INPUT, 3), np.uint8)
        ox, oy = (INPUT - nw) // 2, (INPUT - nh) // 2
        canvas[oy:oy + nh, ox:ox + nw] = small
        x = canvas.astype(np.float32) / 127.5 - 1.0
        return x[None], ox / INPUT, oy / INPUT, nw / INPUT, nh / INPUT

    def _run(self, rgb: np.ndarray, min_score: float) -> list[_Raw]:
        """Detections on ``rgb`` (before NMS), coordinates normalised to ``rgb``."""
        x, px, py, sx, sy = self._letterbox(rgb)
        with self._lock:
            if self._interp is None:
                raise RuntimeError("PersonDetector is closed")
            self._interp.set_tensor(self._in, x)
            self._interp.invoke()
            raw = self._interp.get_tensor(self._boxes)[0].copy()
            logits = self._interp.get_tensor(self._scores)[0, :, 0].copy()
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)))
        keep = np.nonzero(scores >= min_score)[0]
        out = []
        for i in keep:
            ax, ay = self._anchors[i]
            r = raw[i] / INPUT
            cx, cy, bw, bh = r[0] + ax, r[1] + ay, r[2], r[3]
            box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            kps = r[4:12].reshape(4, 2) + (ax, ay)
            # letterbox removal
            box = (box - (px, py, px, py)) / (sx, sy, sx, sy)
            kps = (kps - (px, py)) / (sx, sy)
            out.append(_Raw(box, kps, float(scores[i])))
        return out

    # ------------------------------------------------------------ API
    def detect(self, rgb: np.ndarray, min_score: float = 0.5, tiles: bool = False,
               verify: bool = True, windows: bool = True) -> list[Person]:
        """People in ``rgb`` (H, W, 3 uint8), highest score first (see the module docstring)."""
        h, w = rgb.shape[:2]
        if h < 8 or w < 8:
            return []
        cands = [_to_person(d, w, h) for d in weighted_nms(self._run(rgb, min_score))]
        if windows:
            for tx, ty, side in window_grid(h, w):
                cands += [p for p in self._run_tile(rgb, tx, ty, side, min_score, f"window{side}")
                          if _inside_share(p, tx, ty, side, w, h) >= TILE_MIN_INSIDE
                          and 2 * _half_body(p, w, h) >= WINDOW_MIN_REL * side]
        if tiles:
            for tx, ty, side in tile_grid(h, w):
                cands += [p for p in self._run_tile(rgb, tx, ty, side, min_score, f"tile{side}")
                          if _small_and_inside(p, tx, ty, side, w, h)]
        people = merge(cands, w, h)
        if verify:
            people = [p for p in people if self.crop_score(rgb, p) >= min_score]
        people.sort(key=lambda p: -p.score)
        return people

    def _run_tile(self, rgb: np.ndarray, tx: int, ty: int, side: int, min_score: float, source: str) -> list[Person]:
        """One pass on the square (tx, ty, side) of ``rgb``; people in the frame's coordinates."""
        h, w = rgb.shape[:2]
        sub = np.ascontiguousarray(rgb[ty:ty + side, tx:tx + side])
        th, tw = sub.shape[:2]
        scale, off = np.array([tw / w, th / h]), np.array([tx / w, ty / h])
        return [_to_person(_Raw((d.box.reshape(2, 2) * scale + off).reshape(4), d.kps * scale + off, d.score), w, h,
                           source)
                for d in weighted_nms(self._run(sub, min_score))]

    def crop_score(self, rgb: np.ndarray, p: Person) -> float:
        """The detector's score for ``p`` on its own aligned crop (0 when it finds it no more)."""
        h, w = rgb.shape[:2]
        kp = 0 if -VERIFY_HIP_MARGIN <= p.keypoints[0][1] <= 1 + VERIFY_HIP_MARGIN else 2
        cx, cy, side, rot = p.roi(w, h, ROI_SCALE, upper_body=kp == 2)
        crop = aligned_crop(rgb, cx, cy, side, rot, INPUT)
        best = 0.0
        for d in weighted_nms(self._run(crop, 0.1)):
            x, y = d.kps[kp]
            if math.hypot(x - 0.5, y - 0.5) < VERIFY_CENTRE_TOL:
                best = max(best, d.score)
        return best


def detect_people(detector: "PersonDetector", rgb: np.ndarray, tiles: str = "auto",
                  min_score: float = 0.5) -> list[Person]:
    """``detector.detect`` with the ``person_tiles`` choice: ``on``, ``off`` or ``auto`` (the tile pass
    too on frames of AUTO_TILES_MIN_SIDE px or more, unless the whole frame already shows a person of
    at least AUTO_TILES_TALL of its height: close-ups need no tiles, street scenes do)."""
    if tiles not in TILE_MODES:
        raise ValueError(f"person_tiles {tiles!r}: use one of {', '.join(TILE_MODES)}")
    people = detector.detect(rgb, min_score=min_score, tiles=tiles == "on")
    h, w = rgb.shape[:2]
    if tiles == "auto" and min(h, w) >= AUTO_TILES_MIN_SIDE and \
            not any(p.box[3] - p.box[1] >= AUTO_TILES_TALL for p in people):
        people = detector.detect(rgb, min_score=min_score, tiles=True)
    return people


def aligned_crop(rgb: np.ndarray, cx: float, cy: float, side: float, rot: float, out: int,
                 replicate: bool = False) -> np.ndarray:
    """``out`` x ``out`` crop of the square (centre cx, cy, side, rotation rot radians; pixels); outside
    the frame black, or the edge pixels repeated (``replicate``, as MediaPipe's landmark graphs do)."""
    s = out / max(side, 1e-6)
    m = cv2.getRotationMatrix2D((cx, cy), math.degrees(rot), s)
    m[0, 2] += out / 2 - cx
    m[1, 2] += out / 2 - cy
    border = cv2.BORDER_REPLICATE if replicate else cv2.BORDER_CONSTANT
    return cv2.warpAffine(rgb, m, (out, out), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=border, borderValue=(0, 0, 0))


def _half_body(p: Person, w: int, h: int) -> float:
    """Half the side of the person's body square, in pixels of a w x h frame."""
    (hx, hy), (sx, sy) = p.keypoints[0], p.keypoints[1]
    return math.hypot((sx - hx) * w, (sy - hy) * h)


def _inside_share(p: Person, tx: int, ty: int, side: int, w: int, h: int) -> float:
    """Share of the person's body square (the part within the frame) that lies inside the tile."""
    r = _half_body(p, w, h)
    cx, cy = p.keypoints[0][0] * w, p.keypoints[0][1] * h

    def overlap(a0, a1, b0, b1):
        return max(0.0, min(a1, b1) - max(a0, b0))
    in_frame = overlap(cx - r, cx + r, 0, w) * overlap(cy - r, cy + r, 0, h)
    in_tile = overlap(cx - r, cx + r, tx, tx + side) * overlap(cy - r, cy + r, ty, ty + side)
    return in_tile / in_frame if in_frame > 0 else 0.0


def _small_and_inside(p: Person, tx: int, ty: int, side: int, w: int, h: int) -> bool:
    """A tile's detection counts only if the person is small in the tile and mostly inside it: a large
    person cut by the tile's edge makes the model see a 'person' in each piece."""
    r = _half_body(p, w, h)
    if r <= 0 or 2 * r > TILE_MAX_REL * side:
        return False
    return _inside_share(p, tx, ty, side, w, h) >= TILE_MIN_INSIDE


def _centres(p: Person, w: int, h: int) -> tuple[np.ndarray, float]:
    k = np.array(p.keypoints) * (w, h)
    return k, float(np.hypot(*(k[1] - k[0])))


def same_person(a: Person, b: Person, w: int, h: int) -> bool:
    """Shoulder centres within SAME_SHOULDER and hip centres within SAME_HIP of the smaller body's
    half-size (people side by side have shoulder centres a shoulder width, ~0.5 half-size, apart)."""
    ka, ra = _centres(a, w, h)
    kb, rb = _centres(b, w, h)
    r = max(1.0, min(ra, rb))
    return bool(np.hypot(*(ka[2] - kb[2])) < SAME_SHOULDER * r and np.hypot(*(ka[0] - kb[0])) < SAME_HIP * r)


def merge(people: list[Person], w: int, h: int) -> list[Person]:
    """Detections of one person from several passes (frame, tiles) -> the best-scored one."""
    kept: list[Person] = []
    for p in sorted(people, key=lambda p: -p.score):
        if not any(same_person(p, k, w, h) for k in kept):
            kept.append(p)
    return kept


def _to_person(d: _Raw, width: int, height: int, source: str = "frame") -> Person:
    kps = [(float(x), float(y)) for x, y in d.kps]
    (hx, hy), (sx, sy) = kps[0], kps[1]
    # the body square in pixels (aspect-correct), then normalised and clipped
    r = math.hypot((sx - hx) * width, (sy - hy) * height)
    x0, x1 = (hx * width - r) / width, (hx * width + r) / width
    y0, y1 = (hy * height - r) / height, (hy * height + r) / height
    clip = lambda v: float(min(1.0, max(0.0, v)))  # noqa: E731
    fb = tuple(clip(v) for v in d.box)
    return Person((clip(x0), clip(y0), clip(x1), clip(y1)), d.score, kps, fb, source)
