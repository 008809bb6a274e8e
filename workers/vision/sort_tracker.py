"""Multi-object tracking by detection: a Kalman filter per track and ByteTrack's two-stage association.

Each track's box is a constant-velocity Kalman filter on (centre x, centre y, aspect w/h, height) and
their velocities (ByteTrack's 8-state `xyah` filter; noise proportional to the box height, so the
filter works at any scale). Boxes are (x, y, w, h) in any unit the caller keeps to; pixels make the
aspect ratio mean what it says.

A frame's update (ByteTrack, Zhang et al. 2022):
1. every track is predicted one frame ahead;
2. confirmed and lost tracks are matched to the high-score detections (score >= `high`) by IoU with the
   predicted box (Hungarian algorithm; pairs below `match_iou` are forbidden, and so are pairs whose
   heights differ by more than `max_scale_change` (a box twice a person's size that overlaps them is
   not them) and, with appearance features, pairs whose appearance differs more than `max_appearance`);
3. confirmed tracks still unmatched are matched to the low-score detections (`low` <= score < `high`:
   partly occluded people) at a stricter IoU (`low_match_iou`): a low score keeps a track alive but
   never starts one;
4. tentative tracks are matched to the high-score detections left;
5. high-score detections left start tentative tracks (score >= `new_track`); a tentative track gets an id
   once it was matched on `min_hits` frames, so a one-frame spurious box never gets an id; a tentative
   track missed more than `tentative_misses` frames in a row is dropped (0, ByteTrack's rule: the
   matches must be consecutive; a detector that misses a person every other frame needs more). On the
   stream's first frame detections are confirmed at once (as ByteTrack does), so a stream starts with
   its objects;
6. a confirmed track that is not matched becomes lost; its box keeps moving with the filter's velocity
   and it can be matched again for `max_age` frames, then it is deleted. Ids are never reused.

`update` returns the confirmed tracks matched in this frame; each carries its filtered box, the
detection's score and its last `trajectory_len` boxes.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

TENTATIVE, CONFIRMED, LOST = "tentative", "confirmed", "lost"


# ------------------------------------------------------------------ Kalman filter
class KalmanBoxFilter:
    """Constant-velocity Kalman filter on (cx, cy, a, h, vcx, vcy, va, vh), as in ByteTrack / DeepSORT."""

    pos_weight = 1.0 / 20
    vel_weight = 1.0 / 160

    def __init__(self):
        self.F = np.eye(8)
        self.F[:4, 4:] = np.eye(4)
        self.H = np.eye(4, 8)

    def initiate(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = z[3]
        mean = np.r_[z, np.zeros(4)]
        std = np.array([2 * self.pos_weight * h, 2 * self.pos_weight * h, 1e-2, 2 * self.pos_weight * h,
                        10 * self.vel_weight * h, 10 * self.vel_weight * h, 1e-5, 10 * self.vel_weight * h])
        return mean, np.diag(std ** 2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        std = np.array([self.pos_weight * h, self.pos_weight * h, 1e-2, self.pos_weight * h,
                        self.vel_weight * h, self.vel_weight * h, 1e-5, self.vel_weight * h])
        return self.F @ mean, self.F @ cov @ self.F.T + np.diag(std ** 2)

    def update(self, mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        r = np.array([self.pos_weight * h, self.pos_weight * h, 1e-1, self.pos_weight * h]) ** 2
        s = self.H @ cov @ self.H.T + np.diag(r)
        gain = np.linalg.solve(s, self.H @ cov).T            # cov H^T S^-1 (S symmetric)
        mean = mean + gain @ (z - self.H @ mean)
        cov = cov - gain @ s @ gain.T
        return mean, cov


def to_xyah(box: Sequence[float]) -> np.ndarray:
    x, y, w, h = box
    return np.array([x + w / 2, y + h / 2, w / max(h, 1e-9), h], dtype=float)


def to_xywh(m: np.ndarray) -> tuple[float, float, float, float]:
    cx, cy, a, h = (float(v) for v in m[:4])
    h = max(h, 1e-9)
    w = max(a, 0.0) * h
    return (cx - w / 2, cy - h / 2, w, h)


# ------------------------------------------------------------------ assignment
def iou_matrix(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """IoU of every (x, y, w, h) box of `a` with every box of `b`."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a = np.asarray(a, dtype=float)[:, None, :]
    b = np.asarray(b, dtype=float)[None, :, :]
    iw = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def hungarian(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment of a rectangular matrix (Kuhn-Munkres with potentials, O(n^2 m)).

    Returns min(rows, cols) (row, col) pairs. Finite costs only."""
    cost = np.asarray(cost, dtype=float)
    if cost.size == 0:
        return []
    flip = cost.shape[0] > cost.shape[1]
    c = cost.T if flip else cost
    n, m = c.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=int)        # p[j]: row (1-based) assigned to column j, 0 = none
    way = np.zeros(m + 1, dtype=int)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = c[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    pairs = [(int(p[j]) - 1, j - 1) for j in range(1, m + 1) if p[j]]
    return sorted((cj, ri) for ri, cj in pairs) if flip else sorted(pairs)


def assign(cost: np.ndarray, allowed: np.ndarray) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Optimal matching using only the allowed pairs: (matches, unmatched rows, unmatched cols).

    Forbidden pairs get a cost larger than any set of allowed ones, so the Hungarian algorithm first
    maximises the number of allowed pairs, then minimises their total cost; forbidden pairs it still
    had to take are dropped."""
    n, m = cost.shape
    if n == 0 or m == 0:
        return [], list(range(n)), list(range(m))
    big = 1.0 + float(np.abs(cost[allowed]).sum()) if allowed.any() else 1.0
    pairs = [(r, c) for r, c in hungarian(np.where(allowed, cost, big)) if allowed[r, c]]
    rows, cols = {r for r, _ in pairs}, {c for _, c in pairs}
    return pairs, [r for r in range(n) if r not in rows], [c for c in range(m) if c not in cols]


def appearance_distance(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> float:
    """1 - cosine similarity of two feature vectors (0 when either is missing)."""
    if a is None or b is None:
        return 0.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return 1.0 - float(np.dot(a, b)) / (na * nb)


# ------------------------------------------------------------------ tracks
@dataclass
class Track:
    label: str
    mean: np.ndarray
    cov: np.ndarray
    score: float
    feature: Optional[np.ndarray] = None
    track_id: int = 0                 # 0 while tentative
    state: str = TENTATIVE
    hits: int = 1                     # consecutive frames matched
    missed: int = 0                   # frames since the last match
    trajectory: deque = field(default_factory=deque)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return to_xywh(self.mean)


class ByteTracker:
    """Tracks of one kind of object (one label). See the module docstring for the algorithm."""

    def __init__(self, label: str = "", *, high: float = 0.5, low: float = 0.1, new_track: float = 0.6,
                 match_iou: float = 0.2, low_match_iou: float = 0.5, tentative_iou: float = 0.3,
                 min_hits: int = 3, max_age: int = 30, trajectory_len: int = 30,
                 max_scale_change: float = 1.5, max_appearance: float = 1.0, feature_momentum: float = 0.9,
                 tentative_misses: int = 0, ids: Optional[Iterator[int]] = None):
        self.label = label
        self.high, self.low, self.new_track = high, low, new_track
        self.match_iou, self.low_match_iou, self.tentative_iou = match_iou, low_match_iou, tentative_iou
        self.min_hits, self.max_age, self.trajectory_len = max(1, min_hits), max(0, max_age), max(1, trajectory_len)
        self.max_scale_change = max(1.0, max_scale_change)
        self.tentative_misses = max(0, tentative_misses)
        self.max_appearance, self.feature_momentum = max_appearance, feature_momentum
        self.ids = ids if ids is not None else itertools.count(1)
        self.kf = KalmanBoxFilter()
        self.tracks: list[Track] = []
        self.frames = 0

    # -------------------------------------------------------------- helpers
    def _pairs(self, tracks: list[Track], dets: list[int], boxes, feats, min_iou: float):
        if not tracks or not dets:
            return [], list(range(len(tracks))), list(range(len(dets)))
        ious = iou_matrix([t.box for t in tracks], [boxes[d] for d in dets])
        ratio = np.array([[boxes[d][3] / max(t.box[3], 1e-9) for d in dets] for t in tracks])
        allowed = (ious >= min_iou) & (ratio <= self.max_scale_change) & (ratio >= 1.0 / self.max_scale_change)
        if feats is not None:
            app = np.array([[appearance_distance(t.feature, feats[d]) for d in dets] for t in tracks])
            allowed &= app <= self.max_appearance
        return assign(1.0 - ious, allowed)

    def _match(self, t: Track, box, score: float, feat) -> None:
        t.mean, t.cov = self.kf.update(t.mean, t.cov, to_xyah(box))
        t.score = float(score)
        if feat is not None:
            f = np.asarray(feat, dtype=float)
            t.feature = f if t.feature is None else self.feature_momentum * t.feature + (1 - self.feature_momentum) * f
        t.hits = t.hits + 1 if t.missed == 0 or t.state == TENTATIVE else 1
        t.missed = 0
        if t.state == LOST:
            t.state = CONFIRMED
        elif t.state == TENTATIVE and t.hits >= self.min_hits:
            self._confirm(t)
        self._remember(t)

    def _confirm(self, t: Track) -> None:
        t.state = CONFIRMED
        t.track_id = next(self.ids)

    def _remember(self, t: Track) -> None:
        t.trajectory.append(t.box)
        while len(t.trajectory) > self.trajectory_len:
            t.trajectory.popleft()

    def predictions(self, max_missed: Optional[int] = None) -> list[tuple[Track, tuple[float, float, float, float]]]:
        """Confirmed and lost tracks (lost for at most `max_missed` frames) with their box predicted for
        the next frame; nothing changes (`update` predicts again)."""
        out = []
        for t in self.tracks:
            if t.state == TENTATIVE or (max_missed is not None and t.missed > max_missed):
                continue
            mean = t.mean.copy()
            if t.state == LOST:
                mean[7] = 0.0
            out.append((t, to_xywh(self.kf.predict(mean, t.cov)[0])))
        return out

    # -------------------------------------------------------------- update
    def update(self, boxes: Sequence[Sequence[float]], scores: Sequence[float],
               features: Optional[Sequence[Optional[np.ndarray]]] = None) -> list[Track]:
        """One frame's detections (boxes x, y, w, h; scores; optional appearance features).

        Returns the confirmed tracks matched in this frame, ordered by id."""
        self.frames += 1
        boxes = [tuple(float(v) for v in b) for b in boxes]
        scores = [float(s) for s in scores]
        keep = [i for i, b in enumerate(boxes) if b[2] > 0 and b[3] > 0 and scores[i] >= self.low]
        high = [i for i in keep if scores[i] >= self.high]
        low = [i for i in keep if scores[i] < self.high]
        for t in self.tracks:
            if t.state == LOST:
                t.mean[7] = 0.0                       # a lost box keeps its size
            t.mean, t.cov = self.kf.predict(t.mean, t.cov)
        matched: set[int] = set()

        def take(pairs, tracks, dets):
            for ti, di in pairs:
                d = dets[di]
                self._match(tracks[ti], boxes[d], scores[d], features[d] if features is not None else None)
                matched.add(id(tracks[ti]))

        # 1. confirmed + lost tracks with the high-score detections
        pool = [t for t in self.tracks if t.state != TENTATIVE]
        pairs, un_t, un_d = self._pairs(pool, high, boxes, features, self.match_iou)
        take(pairs, pool, high)
        high_left = [high[d] for d in un_d]
        # 2. confirmed tracks still unmatched with the low-score detections
        pool2 = [pool[i] for i in un_t if pool[i].state == CONFIRMED]
        pairs, _, _ = self._pairs(pool2, low, boxes, features, self.low_match_iou)
        take(pairs, pool2, low)
        # 3. tentative tracks with the high-score detections left
        tent = [t for t in self.tracks if t.state == TENTATIVE]
        pairs, _, un_d = self._pairs(tent, high_left, boxes, features, self.tentative_iou)
        take(pairs, tent, high_left)
        fresh = [high_left[d] for d in un_d]
        # 4. unmatched tracks: tentative ones dropped, confirmed ones lost, lost ones aged out
        alive = []
        for t in self.tracks:
            if id(t) not in matched:
                t.missed += 1
                if t.state == TENTATIVE:
                    if t.missed > self.tentative_misses:
                        continue
                    alive.append(t)
                    continue
                t.hits = 0
                t.state = LOST
                if t.missed > self.max_age:
                    continue
            alive.append(t)
        # 5. new tracks
        for d in fresh:
            if scores[d] < self.new_track:
                continue
            mean, cov = self.kf.initiate(to_xyah(boxes[d]))
            f = features[d] if features is not None else None
            t = Track(self.label, mean, cov, scores[d], None if f is None else np.asarray(f, dtype=float))
            if self.frames == 1 or self.min_hits <= 1:
                self._confirm(t)
            self._remember(t)
            alive.append(t)
            matched.add(id(t))
        self.tracks = alive
        out = [t for t in self.tracks if id(t) in matched and t.state == CONFIRMED]
        return sorted(out, key=lambda t: t.track_id)
