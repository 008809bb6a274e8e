"""Multi-object tracking of faces and people with ids that stay stable across frames.

Each frame's detections (label, normalised box, score) are matched to the live tracks of the same
label: a track's box is first predicted with its recent velocity, then pairs are taken greedily by
IoU (>= `min_iou`), and, failing that, by centre distance (< `max_center_dist` × the box's size).
A matched track keeps its id and smooths its box; an unmatched detection starts a new id; a track
unmatched for more than `max_missed` frames is dropped. Each track keeps its last `trajectory_len`
boxes. Ids are per stream and never reused.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from protos import ml_inference_pb2 as pb
from workers.vision.mesh import iou


@dataclass
class Track:
    track_id: int
    label: str
    box: tuple
    score: float
    velocity: tuple = (0.0, 0.0)
    hits: int = 1
    missed: int = 0
    trajectory: deque = field(default_factory=deque)

    def predicted(self) -> tuple:
        x, y, w, h = self.box
        k = self.missed + 1
        return (x + self.velocity[0] * k, y + self.velocity[1] * k, w, h)


class Tracker:
    def __init__(self, min_iou: float = 0.2, max_center_dist: float = 0.75, max_missed: int = 10,
                 trajectory_len: int = 30, smoothing: float = 0.6):
        self.min_iou = min_iou
        self.max_center_dist = max_center_dist
        self.max_missed = max_missed
        self.trajectory_len = trajectory_len
        self.smoothing = smoothing
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, detections: list[tuple[str, tuple, float]]) -> list[Track]:
        """detections: [(label, (x, y, w, h), score)]. Returns the tracks matched in this frame."""
        pairs = []
        for ti, t in enumerate(self.tracks):
            pb_ = t.predicted()
            for di, (label, box, _) in enumerate(detections):
                if label != t.label:
                    continue
                o = iou(pb_, box)
                if o >= self.min_iou:
                    pairs.append((1.0 + o, ti, di))
                    continue
                size = max(1e-6, (pb_[2] + pb_[3]) / 2, (box[2] + box[3]) / 2)
                dc = np.hypot(pb_[0] + pb_[2] / 2 - box[0] - box[2] / 2, pb_[1] + pb_[3] / 2 - box[1] - box[3] / 2) / size
                if dc < self.max_center_dist:
                    pairs.append((1.0 - dc / self.max_center_dist, ti, di))
        pairs.sort(reverse=True)
        used_t, used_d, matched = set(), set(), []
        for _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            t = self.tracks[ti]
            _, box, score = detections[di]
            a = self.smoothing
            old = t.box
            new = tuple(a * b + (1 - a) * o for b, o in zip(box, old))
            steps = t.missed + 1
            vel = ((new[0] - old[0]) / steps, (new[1] - old[1]) / steps)
            t.velocity = (0.5 * t.velocity[0] + 0.5 * vel[0], 0.5 * t.velocity[1] + 0.5 * vel[1])
            t.box, t.score, t.hits, t.missed = new, score, t.hits + 1, 0
            matched.append(t)
        for ti, t in enumerate(self.tracks):
            if ti not in used_t:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for di, (label, box, score) in enumerate(detections):
            if di not in used_d:
                t = Track(self._next_id, label, tuple(box), score)
                self._next_id += 1
                self.tracks.append(t)
                matched.append(t)
        for t in matched:
            t.trajectory.append(t.box)
            while len(t.trajectory) > self.trajectory_len:
                t.trajectory.popleft()
        matched.sort(key=lambda t: t.track_id)
        return matched


def to_proto(t: Track) -> pb.TrackedObject:
    box = lambda b: pb.BoundingBox(x=b[0], y=b[1], width=b[2], height=b[3])  # noqa: E731
    m = pb.TrackedObject(track_id=t.track_id, label=t.label, bbox=box(t.box), confidence=t.score)
    m.trajectory.extend(box(b) for b in t.trajectory)
    return m


def hog_people(rgb: np.ndarray, state: dict, min_height_px: int = 96) -> list[tuple]:
    """Several people per frame with OpenCV's HOG pedestrian detector (ships with OpenCV).
    Frames are upscaled so that people about `min_height_px` tall fill the 128-px detection window."""
    import cv2
    hog = state.get("hog")
    if hog is None:
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        state["hog"] = hog
    h, w = rgb.shape[:2]
    scale = max(1.0, 128.0 / min_height_px)
    img = cv2.resize(rgb, (int(w * scale), int(h * scale))) if scale > 1.0 else rgb
    rects, weights = hog.detectMultiScale(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), winStride=(8, 8),
                                          padding=(8, 8), scale=1.08)
    out = []
    for (x, y, rw, rh), wt in zip(rects, np.ravel(weights) if len(rects) else []):
        conf = float(1.0 / (1.0 + np.exp(-float(wt))))
        out.append((x / scale / w, y / scale / h, rw / scale / w, rh / scale / h, conf))
    # HOG boxes of one person overlap: keep the strongest
    out.sort(key=lambda r: -r[4])
    kept = []
    for r in out:
        if all(iou(r[:4], k[:4]) < 0.4 for k in kept):
            kept.append(r)
    return kept
