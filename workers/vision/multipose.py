"""Every person's pose: the BlazePose person detector, then the pose landmark model on each person's ROI.

MediaPipe's pose graph follows one person: the person detector gives a region of interest (ROI), the
landmark model runs on it, and the next frame's ROI comes from the landmarks' auxiliary points. Here
that loop runs once per person (``person_detector`` + ``pose_landmarker``). A result is kept only
if it is the person its ROI was made for (shoulder centre near the expected one) and not a second
copy of a person already kept (shoulder and hip centres within a fraction of the torso).

Images (``detect``): every detected person (``person_tiles``: tiles for small people) up to ``max_poses``, the
detector's best first, returned left to right (hip centre x).

Streams (``PoseTracker``): each track follows its person with the ROI from its last landmarks (no
detector); the detector runs on the first frame, every ``redetect_every`` frames and on any frame
where a track was lost, and starts tracks for people no track follows, up to ``max_poses``. A lost
track waits ``max_missed`` frames: a detection near its last place gets its id back. Ids start at 1
and are never given to another person of the stream; results come ordered by id.

Holistic (``holistic_parts``): MediaPipe's legacy holistic solution (static-image mode) on the
person's ROI cut out at its own resolution (256-768 px): the face mesh and hands it finds, mapped back
to the frame, are kept when its pose is the same person's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from workers.vision import person_detector
from workers.vision.pose import Pose, from_landmarks, from_result

SAME_SHOULDER, SAME_HIP = 0.3, 0.4     # x torso length: two skeletons this close are one person
MATCH_SHOULDER = 0.6                   # x torso length: an ROI's skeleton must be this near the expected place
HOLISTIC_SIDE = (256, 768)             # px: the holistic crop's side, clamped
L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 11, 12, 23, 24
LANDMARK_FIELDS = ("pose_landmarks", "face_landmarks", "left_hand_landmarks", "right_hand_landmarks")


@dataclass
class PersonPose:
    pose: Pose                                   # frame-normalised
    roi: tuple[float, float, float, float]       # the ROI it came from (pixels: cx, cy, side, rotation)
    next_roi: tuple[float, float, float, float]  # the ROI for the next frame
    track_id: int = 0
    parts: object = None                         # holistic_parts' result (face / hand landmark lists)


def centres(p: Pose, w: int, h: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Shoulder centre, hip centre (pixels) and the torso length (>= 1 px)."""
    px = p.image[:, :2] * (w, h)
    sh = (px[L_SHOULDER] + px[R_SHOULDER]) / 2
    hp = (px[L_HIP] + px[R_HIP]) / 2
    return sh, hp, max(1.0, float(np.hypot(*(sh - hp))))


def same_person(a: Pose, b: Pose, w: int, h: int) -> bool:
    sa, ha, ta = centres(a, w, h)
    sb, hb, tb = centres(b, w, h)
    t = min(ta, tb)
    return bool(np.hypot(*(sa - sb)) < SAME_SHOULDER * t and np.hypot(*(ha - hb)) < SAME_HIP * t)


def on_roi(landmarker, rgb: np.ndarray, roi, expected_shoulder: Optional[np.ndarray] = None,
           tol_px: float = 0.0) -> Optional[PersonPose]:
    """The landmark model on one ROI; None when it finds nobody or someone other than expected."""
    lm = landmarker.run(rgb, roi)
    if lm is None:
        return None
    p = from_landmarks(lm)
    if expected_shoulder is not None:
        h, w = rgb.shape[:2]
        if np.hypot(*(centres(p, w, h)[0] - expected_shoulder)) > tol_px:
            return None
    return PersonPose(p, lm.roi, lm.next_roi)


def from_detection(landmarker, rgb: np.ndarray, det: person_detector.Person) -> Optional[PersonPose]:
    h, w = rgb.shape[:2]
    roi = det.roi(w, h)
    kps = np.array(det.keypoints) * (w, h)
    torso = max(1.0, float(np.hypot(*(kps[2] - kps[0]))))
    return on_roi(landmarker, rgb, roi, kps[2], MATCH_SHOULDER * torso + 0.1 * roi[2])


def _add_distinct(kept: list[PersonPose], new: Optional[PersonPose], w: int, h: int) -> bool:
    if new is None or any(same_person(new.pose, k.pose, w, h) for k in kept):
        return False
    kept.append(new)
    return True


def detect(detector, landmarker, rgb: np.ndarray, max_poses: int = 4, tiles: str = "auto",
           check: Optional[Callable[[], None]] = None) -> list[PersonPose]:
    """Up to ``max_poses`` people in an image, left to right (hip centre x); ``tiles``: the
    ``person_tiles`` choice (person_detector.detect_people)."""
    h, w = rgb.shape[:2]
    kept: list[PersonPose] = []
    for det in person_detector.detect_people(detector, rgb, tiles):
        if len(kept) >= max_poses:
            break
        if check is not None:
            check()
        _add_distinct(kept, from_detection(landmarker, rgb, det), w, h)
    kept.sort(key=lambda pp: float(centres(pp.pose, w, h)[1][0]))
    return kept


@dataclass
class _Track:
    id: int
    last: PersonPose
    missed: int = 0


class PoseTracker:
    """Per-stream people tracks (see the module docstring). One per stream, one frame at a time."""

    def __init__(self, max_poses: int = 4, redetect_every: int = 10, max_missed: int = 5, tiles: str = "auto"):
        self.max_poses = max(1, max_poses)
        self.redetect_every = max(1, redetect_every)
        self.max_missed = max(0, max_missed)
        self.tiles = tiles
        self.tracks: list[_Track] = []
        self.next_id = 1
        self.frame = 0
        self.detector_runs = 0

    def update(self, detector, landmarker, rgb: np.ndarray,
               check: Optional[Callable[[], None]] = None) -> list[PersonPose]:
        h, w = rgb.shape[:2]
        live: list[PersonPose] = []
        seen: set[int] = set()
        # 1. every followed track from its last landmarks (oldest first: it keeps a person two tracks reach)
        for t in sorted(self.tracks, key=lambda t: t.id):
            if t.missed:
                continue
            if check is not None:
                check()
            sh, _, torso = centres(t.last.pose, w, h)
            pp = on_roi(landmarker, rgb, t.last.next_roi, sh, MATCH_SHOULDER * torso)
            if pp is not None and _add_distinct(live, pp, w, h):
                pp.track_id = t.id
                t.last = pp
                seen.add(t.id)
        lost = any(not t.missed and t.id not in seen for t in self.tracks)
        # 2. the detector: on the first frame, periodically, and when a track was lost
        if self.frame % self.redetect_every == 0 or lost:
            self.detector_runs += 1
            for det in person_detector.detect_people(detector, rgb, self.tiles):
                if len(live) >= self.max_poses:
                    break
                if check is not None:
                    check()
                if self._followed(det, live, w, h):
                    continue
                pp = from_detection(landmarker, rgb, det)
                if pp is None or not _add_distinct(live, pp, w, h):
                    continue
                old = self._lost_track_near(pp, [t for t in self.tracks if t.id not in seen], w, h)
                if old is not None:
                    old.last, old.missed = pp, 0
                    pp.track_id = old.id
                else:
                    pp.track_id = self.next_id
                    self.next_id += 1
                    self.tracks.append(_Track(pp.track_id, pp))
                seen.add(pp.track_id)
        for t in self.tracks:
            if t.id not in seen:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        self.frame += 1
        live.sort(key=lambda pp: pp.track_id)
        return live

    @staticmethod
    def _followed(det, live: list[PersonPose], w: int, h: int) -> bool:
        """The detection is a person some track already follows (shoulder centres close)."""
        shoulder = np.array(det.keypoints[2]) * (w, h)
        for pp in live:
            sh, _, torso = centres(pp.pose, w, h)
            if np.hypot(*(sh - shoulder)) < MATCH_SHOULDER * torso:
                return True
        return False

    @staticmethod
    def _lost_track_near(pp: PersonPose, lost: list[_Track], w: int, h: int) -> Optional[_Track]:
        """The lost track whose last skeleton is nearest ``pp``, within reach of the frames it missed."""
        sh, _, torso = centres(pp.pose, w, h)
        best, best_d = None, float("inf")
        for t in lost:
            tsh, _, ttorso = centres(t.last.pose, w, h)
            d = float(np.hypot(*(sh - tsh)))
            if d < MATCH_SHOULDER * max(torso, ttorso) * (2 + t.missed) and d < best_d:
                best, best_d = t, d
        return best

    def close(self) -> None:
        self.tracks = []


# ---------------------------------------------------------------------- holistic
class _Mapped:
    """A legacy holistic result with its image landmark lists in frame coordinates."""

    def __init__(self, res, roi, out: int, w: int, h: int):
        self.roi, self.out, self.w, self.h = roi, out, w, h
        for name in LANDMARK_FIELDS:
            setattr(self, name, self._map(getattr(res, name, None)))

    def _map(self, lst):
        if lst is None:
            return None
        cx, cy, side, rot = self.roi
        c, s = math.cos(rot), math.sin(rot)
        out = type(lst)()
        out.CopyFrom(lst)
        for p in out.landmark:
            u, v = (p.x - 0.5) * side, (p.y - 0.5) * side
            p.x, p.y, p.z = (cx + c * u - s * v) / self.w, (cy + s * u + c * v) / self.h, p.z * side / self.w
        return out


def holistic_parts(solution, rgb: np.ndarray, pp: PersonPose) -> Optional[_Mapped]:
    """Face and hand landmark lists for ``pp`` from a static holistic solution on its ROI, or None when
    the solution found nobody there or someone else."""
    h, w = rgb.shape[:2]
    lo, hi = HOLISTIC_SIDE
    out = int(min(hi, max(lo, pp.roi[2])))
    crop = person_detector.aligned_crop(rgb, *pp.roi, out, replicate=True)
    mapped = _Mapped(solution.process(crop), pp.roi, out, w, h)
    theirs = from_result(mapped.pose_landmarks, None)
    if theirs is None or not same_person(theirs, pp.pose, w, h):
        return None
    return mapped
