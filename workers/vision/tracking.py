"""StreamObjectTracking's tracks: faces and people with ids that stay stable across frames.

Each label has its own tracker (`sort_tracker.ByteTracker`: a Kalman filter per track, ByteTrack's
two-stage IoU association, birth after `min_hits` frames, `max_missed` frames of coasting); the trackers
of one stream share one id counter, so an id names one object of the stream whatever its label, and
ids are never reused. Trackers work in pixels (the Kalman filter's aspect ratio and noise are
pixel-true); boxes are normalised again for the answer.

People come from the BlazePose person detector (`person_detector.py`), whose box is a square around
the whole body (wider than a standing person, so neighbours' squares overlap); `person_box` makes it
a person-shaped box from the detector's keypoints: the square's height (head to feet) and
`PERSON_ASPECT` of it wide, centred between the hip and shoulder centres.

A person track is confirmed after 3 matches with up to 2 missed frames between them (ByteTrack's rule,
3 in a row, kept for faces): the detector misses a small walker every few frames (on vtest.avi its
tile pass finds 60 of 111 hand-marked walkers on their frame), and walkers seen every other frame
never got an id.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Optional, Sequence

from protos import ml_inference_pb2 as pb
from workers.vision.sort_tracker import ByteTracker, Track, iou_matrix

TARGETS = {"people": "person", "person": "person", "faces": "face", "face": "face"}
DEFAULT_TARGETS = "people,faces"
PERSON_MIN_SCORE = 0.3          # people down to this score feed the tracker (ByteTrack: below 0.5 only keep tracks)
PERSON_ASPECT = 0.45        # width / height of a walking person's box (arms and legs apart)

# ByteTracker settings per label. Faces come from BlazeFace at its own 0.5 threshold (no low-score
# boxes); people from the person detector down to `low` (partly hidden people keep their track).
TRACKER_OPTIONS = {
    "person": dict(high=0.5, low=0.2, new_track=0.6, min_hits=3, tentative_misses=2),
    "face": dict(high=0.5, low=0.3, new_track=0.5, min_hits=2),
}


def parse_targets(value: Optional[str]) -> tuple[str, ...]:
    """Metadata `track` ("people,faces" by default, or one of them) -> labels ("person", "face").

    Raises ValueError naming the accepted values."""
    names = [s.strip().lower() for s in (value or DEFAULT_TARGETS).split(",") if s.strip()]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise ValueError(f"{value!r}: use 'people', 'faces' or 'people,faces'")
    return tuple(dict.fromkeys(TARGETS[n] for n in names))


def person_box(p, width: int, height: int) -> tuple[float, float, float, float]:
    """A detector `Person` -> a normalised (x, y, w, h) box shaped like a standing person, clipped."""
    (hx, hy), (sx, sy), (shx, _), _ = p.keypoints
    r = ((sx - hx) ** 2 * width ** 2 + (sy - hy) ** 2 * height ** 2) ** 0.5     # px: half the body height
    cx = (hx + shx) / 2 * width
    bw = PERSON_ASPECT * 2 * r
    x0, x1 = max(0.0, cx - bw / 2), min(float(width), cx + bw / 2)
    y0, y1 = max(0.0, hy * height - r), min(float(height), hy * height + r)
    if x1 <= x0 or y1 <= y0:
        return (0.0, 0.0, 0.0, 0.0)
    return (x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height)


def find_people(detector, rgb, tiles: str = "auto", min_score: float = PERSON_MIN_SCORE) -> list:
    """The frame's people (person_detector.Person), `tiles` auto / on / off as person_detector.detect_people,
    except that the tile pass runs without the frame-high windows: they are for large people side by
    side, and a frame that needs tiles shows nobody large (two passes fewer per frame)."""
    from workers.vision import person_detector as pd
    h, w = rgb.shape[:2]
    if tiles == "on":
        return detector.detect(rgb, min_score=min_score, tiles=True, windows=False)
    people = detector.detect(rgb, min_score=min_score)
    if tiles == "auto" and min(h, w) >= pd.AUTO_TILES_MIN_SIDE and \
            not any(p.box[3] - p.box[1] >= pd.AUTO_TILES_TALL for p in people):
        people = detector.detect(rgb, min_score=min_score, tiles=True, windows=False)
    return people


def look_again(detector, rgb, tracker: ByteTracker, found: Sequence[tuple], min_score: float = PERSON_MIN_SCORE,
               max_missed: int = 10) -> list[tuple[tuple, float]]:
    """People the frame's detection missed, looked for where their tracks predict them.

    For each person track (confirmed, or lost for at most `max_missed` frames) whose predicted box no
    detection of this frame overlaps, the detector runs on a square crop centred on that box, twice its
    height (the person fills half of the model's input: small people are seen much better than on a
    tile). A detection there counts for the track when its hip centre lies in the predicted box and
    its height is within half to twice the box's, and no other box of the frame overlaps it (IoU 0.3).
    `found`: this frame's normalised person boxes.
    Returns [(normalised box, score)] to add to the frame's detections."""
    from workers.vision.person_detector import INPUT, aligned_crop
    h, w = rgb.shape[:2]
    boxes = [(b[0] * w, b[1] * h, b[2] * w, b[3] * h) for b in found]
    out = []
    for _, (x, y, bw, bh) in tracker.predictions(max_missed):
        if bh <= 0 or (boxes and iou_matrix([(x, y, bw, bh)], boxes).max() >= 0.3):
            continue
        cx, cy, side = x + bw / 2, y + bh / 2, 2.0 * bh
        crop = aligned_crop(rgb, cx, cy, side, 0.0, INPUT)
        best = None
        for p in detector.detect(crop, min_score=min_score, tiles=False, windows=False):
            kps = [(cx + (u - 0.5) * side, cy + (v - 0.5) * side) for u, v in p.keypoints]   # pixels
            (hx, hy), (sx, sy) = kps[0], kps[1]
            height = 2 * ((sx - hx) ** 2 + (sy - hy) ** 2) ** 0.5
            if not (x - 0.1 * bw <= hx <= x + 1.1 * bw and y <= hy <= y + bh and 0.5 * bh <= height <= 2 * bh):
                continue
            if best is None or p.score > best.score:
                best = replace(p, keypoints=[(u / w, v / h) for u, v in kps])
        if best is not None:
            box = person_box(best, w, h)
            px = (box[0] * w, box[1] * h, box[2] * w, box[3] * h)
            if boxes and iou_matrix([px], boxes).max() >= 0.3:
                continue                # someone this frame's detection (or another track's crop) already has
            boxes.append(px)
            out.append((box, best.score))
    return out


class ObjectTracker:
    """One ByteTracker per label, one id counter. `update` takes one frame's normalised detections."""

    def __init__(self, labels: Sequence[str], trajectory_len: int = 30, max_missed: int = 30):
        self.labels = tuple(labels)
        self.trajectory_len, self.max_missed = max(1, trajectory_len), max(0, max_missed)
        self.ids = itertools.count(1)
        self.size: Optional[tuple[int, int]] = None
        self.trackers: dict[str, ByteTracker] = {}

    def _reset(self) -> None:
        self.trackers = {lab: ByteTracker(lab, ids=self.ids, trajectory_len=self.trajectory_len,
                                          max_age=self.max_missed, **TRACKER_OPTIONS[lab])
                         for lab in self.labels}

    def update(self, detections: Sequence[tuple[str, tuple, float]], width: int, height: int) -> list[Track]:
        """detections: [(label, normalised (x, y, w, h), score)]. Returns the tracks seen in this frame
        (boxes in pixels: see `to_proto`), ordered by id. A new frame size starts new tracks."""
        if self.size != (width, height):
            self.size = (width, height)
            self._reset()
        out: list[Track] = []
        for lab, tr in self.trackers.items():
            mine = [(b, s) for label, b, s in detections if label == lab]
            px = [(b[0] * width, b[1] * height, b[2] * width, b[3] * height) for b, _ in mine]
            out += tr.update(px, [s for _, s in mine])
        return sorted(out, key=lambda t: t.track_id)


def to_proto(t: Track, width: int, height: int) -> pb.TrackedObject:
    def box(b):      # pixels -> normalised, clipped to the frame
        x0, y0 = min(max(b[0], 0.0), width), min(max(b[1], 0.0), height)
        x1, y1 = min(max(b[0] + b[2], x0), width), min(max(b[1] + b[3], y0), height)
        return pb.BoundingBox(x=x0 / width, y=y0 / height, width=(x1 - x0) / width, height=(y1 - y0) / height)
    m = pb.TrackedObject(track_id=t.track_id, label=t.label, bbox=box(t.box), confidence=t.score)
    m.trajectory.extend(box(b) for b in t.trajectory)
    return m
