"""Face mesh on every face: detect, then landmark each face on its own crop (MediaPipe's task-graph way).

The legacy face-mesh solution finds faces with the short-range BlazeFace on the whole frame, so it
misses every face that is not large and close (a group photo of five gave 1 mesh, a 45 px face in a
640 px photo none). Here the faces come from ``face_search.search`` (both BlazeFace models, tiles for
small faces, every box verified) and the mesh runs on a square crop around each one:

* **ROI** (``Roi``): centre, side and angle in frame pixels. From a detection: the box centre, side =
  ``DETECT_SCALE`` x the box's longer side, angle = the line from the right eye keypoint to the left
  one (MediaPipe's face_detection_front_detection_to_roi uses the same keypoints). From a previous
  mesh (tracking): the landmarks' box measured along the eye line (landmarks 33 -> 263, as MediaPipe's
  face_landmarks_to_roi), side = ``TRACK_SCALE`` x its longer side. Our scales are above MediaPipe's
  1.5 because the legacy solution finds the face again on the crop with its own detector, which wants
  some context around the face, and a face that moved between frames must still lie inside the crop.
* **Crop**: the ROI rotated upright and resampled to ``CROP_SIDE`` px (black beyond the frame); the mesh
  model itself sees the face at ~128 px, whatever its size in the frame.
* **Mesh**: the legacy solution in static-image mode, one face, iris refinement on, on the crop; its
  landmarks are mapped back to the frame by the inverse transform: x, y normalised to the frame, z (on
  the crop's x scale) multiplied by the crop's side in frame pixels over the frame width, so z stays
  "on the scale of x" of the frame.
* **Check and score**: the short-range detector runs on the same crop; the mesh stands only if a
  detection there overlaps the mesh's face (box IoU >= ``MATCH_IOU``) with score >= ``MIN_SCORE``, and
  its centre lies near the ROI's (not a neighbour's face). That detection's score is the mesh's
  ``confidence`` (the legacy graph exposes no per-face score of its own).

Streams (``FaceTracker``, kept in the stream state, closed with it): each face is a track with an id
(from 1, never reused in the stream). Every frame each track's crop comes from its previous landmarks;
a track whose check fails is lost. The detector (the ``face_search`` pass, which costs several model
runs) runs only when it can add something: on the first frame, on a frame where a track was lost or
while a lost track is still remembered (``MAX_MISSED`` frames: a face re-found where a lost track was
gets its old id back), on every frame while no face is tracked (nothing else to compute then), and
every ``REDETECT_EVERY`` frames while fewer than ``max_faces`` are tracked (faces entering the frame).
With ``max_faces`` tracked it does not run at all, as in MediaPipe. Detections on a tracked face are
ignored (the tracked ROI is kept, as MediaPipe's association does); new faces are taken by detector
score up to ``max_faces`` and numbered left to right, so a single image's faces come left to right.
Results are ordered by id.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Optional

import cv2
import numpy as np

from workers.vision import face_search, mesh
from workers.vision.faces import FULL, SHORT, Face

CROP_SIDE = 256
DETECT_SCALE = 2.0
TRACK_SCALE = 1.8
MATCH_IOU = 0.3
MIN_SCORE = 0.5
MAX_CENTRE_SHIFT = 0.25      # of the ROI's side: a mesh centred farther away is another face
REDETECT_EVERY = 10
MAX_MISSED = 10
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
DEFAULT_MAX_FACES = 4
MAX_FACES_LIMIT = 16


def max_faces(metadata) -> int:
    """metadata ``max_faces``: how many faces to landmark (1-MAX_FACES_LIMIT, default DEFAULT_MAX_FACES).

    Raises ValueError naming the accepted values for anything else."""
    v = ((metadata.get("max_faces", "") if metadata else "") or "").strip()
    if not v:
        return DEFAULT_MAX_FACES
    try:
        n = int(v)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_FACES_LIMIT:
        raise ValueError(f"metadata max_faces={v!r}: use a whole number from 1 to {MAX_FACES_LIMIT}")
    return n


@dataclass
class Roi:
    cx: float                # frame pixels
    cy: float
    side: float
    angle: float             # radians, of the eye line in the image (y down); 0 = upright face


def _angle(p0, p1) -> float:
    return math.atan2(p1[1] - p0[1], p1[0] - p0[0])


def roi_from_face(face: Face, width: int, height: int, scale: float = DETECT_SCALE) -> Roi:
    x, y, w, h = face.box
    angle = 0.0
    if len(face.keypoints) >= 2:    # 0 = right eye, 1 = left eye (the person's)
        (ax, ay), (bx, by) = face.keypoints[0], face.keypoints[1]
        angle = _angle((ax * width, ay * height), (bx * width, by * height))
    return Roi((x + w / 2) * width, (y + h / 2) * height, max(w * width, h * height) * scale, angle)


def roi_from_points(points: np.ndarray, width: int, height: int, scale: float = TRACK_SCALE) -> Roi:
    p = points[:468, :2] * (width, height)
    angle = _angle(p[RIGHT_EYE_OUTER], p[LEFT_EYE_OUTER])
    c, s = math.cos(-angle), math.sin(-angle)
    rot = np.array([[c, -s], [s, c]])
    centre = p.mean(axis=0)
    q = (p - centre) @ rot.T                      # the points with the eye line horizontal
    lo, hi = q.min(axis=0), q.max(axis=0)
    mid = centre + ((lo + hi) / 2) @ rot          # back to the frame (rot is orthogonal)
    return Roi(float(mid[0]), float(mid[1]), float(max(hi - lo)) * scale, angle)


def crop_transform(roi: Roi, side: int = CROP_SIDE) -> np.ndarray:
    """2x3 affine: frame pixels -> crop pixels (the ROI upright, ``side`` px square)."""
    k = side / roi.side
    c, s = math.cos(-roi.angle) * k, math.sin(-roi.angle) * k
    return np.array([[c, -s, side / 2 - (c * roi.cx - s * roi.cy)],
                     [s, c, side / 2 - (s * roi.cx + c * roi.cy)]], dtype=np.float64)


def crop(rgb: np.ndarray, roi: Roi, side: int = CROP_SIDE) -> tuple[np.ndarray, np.ndarray]:
    m = crop_transform(roi, side)
    interp = cv2.INTER_AREA if roi.side > side * 1.5 else cv2.INTER_LINEAR
    out = cv2.warpAffine(rgb, m, (side, side), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return out, m


def to_frame(points_crop: np.ndarray, m: np.ndarray, roi: Roi, width: int, height: int,
             side: int = CROP_SIDE) -> np.ndarray:
    """Normalised crop landmarks (N, 3) -> normalised frame landmarks (z on the frame's x scale)."""
    inv = cv2.invertAffineTransform(m)
    px = points_crop[:, :2] * side
    xy = px @ inv[:, :2].T + inv[:, 2]
    out = np.empty_like(points_crop)
    out[:, 0] = xy[:, 0] / width
    out[:, 1] = xy[:, 1] / height
    out[:, 2] = points_crop[:, 2] * roi.side / width
    return out


def _box_px(points: np.ndarray, side: int) -> tuple[float, float, float, float]:
    x0, y0 = points[:468, :2].min(axis=0) * side
    x1, y1 = points[:468, :2].max(axis=0) * side
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def landmark(mesh_solution, detector, rgb: np.ndarray, roi: Roi) -> Optional[mesh.Mesh]:
    """The mesh of the face in ``roi`` (frame coordinates), or None when the crop holds no such face."""
    h, w = rgb.shape[:2]
    img, m = crop(rgb, roi)
    res = mesh_solution.process(img)
    found = res.multi_face_landmarks or []
    if not found:
        return None
    pc = np.array([(p.x, p.y, p.z) for p in found[0].landmark], dtype=np.float64)
    bx, by, bw, bh = _box_px(pc, CROP_SIDE)
    if math.hypot(bx + bw / 2 - CROP_SIDE / 2, by + bh / 2 - CROP_SIDE / 2) > MAX_CENTRE_SHIFT * CROP_SIDE:
        return None
    score = 0.0
    for c in face_search.run_model(detector, img):
        if face_search.iou(c.box, (bx, by, bw, bh)) >= MATCH_IOU:
            score = max(score, c.score)
    if score < MIN_SCORE:
        return None
    return mesh.Mesh(to_frame(pc, m, roi, w, h), None, score)


def new_mesh_solution():
    """The static-image, one-face, iris-refined legacy face mesh that runs on the crops."""
    from mediapipe.python.solutions import face_mesh
    return face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                              min_detection_confidence=0.5)


@dataclass
class Track:
    track_id: int
    mesh: mesh.Mesh
    lost_at: int = 0         # the stream frame it was lost on (0: live)


def left_to_right(meshes: list) -> list:
    return sorted(meshes, key=lambda m: m.box()[0] + m.box()[2] / 2)


@dataclass
class FaceTracker:
    """Per-stream face tracks (see the module docstring); owns its mesh solution, closed with the stream."""
    redetect_every: int = REDETECT_EVERY
    max_missed: int = MAX_MISSED
    tracks: list = field(default_factory=list)       # live tracks, by id
    lost: list = field(default_factory=list)         # recently lost tracks (their last mesh), by id
    next_id: int = 1
    since_detect: int = 0
    frames: int = 0
    detections: int = 0                               # how many times the detector ran (tests, stats)
    _solution: object = None

    def solution(self):
        if self._solution is None:
            self._solution = new_mesh_solution()
        return self._solution

    def close(self) -> None:
        if self._solution is not None:
            self._solution.close()
            self._solution = None

    def update(self, acquire: Callable[[str], ContextManager], rgb: np.ndarray, max_faces: int,
               kinds: Iterable[str] = (SHORT, FULL), check: Optional[Callable[[], None]] = None) -> list[Track]:
        h, w = rgb.shape[:2]
        self.frames += 1
        kept, lost_now = [], []
        with acquire(SHORT) as det:
            for t in self.tracks:
                if check is not None:
                    check()
                m = landmark(self.solution(), det, rgb, roi_from_points(t.mesh.points, w, h))
                if m is None:
                    lost_now.append((t, m))
                elif not any(face_search.same_face(m.box(), k.mesh.box()) for k, _ in kept):
                    kept.append((t, m))
                # else: two tracks on one face - the older (lower id) keeps it
        for t, m in kept:
            t.mesh = m
        for t, _ in lost_now:
            t.lost_at = self.frames
        self.tracks = [t for t, _ in kept][:max_faces]
        self.lost += [t for t, _ in lost_now]
        self.since_detect += 1
        due = (lost_now or self.lost or not self.tracks
               or (len(self.tracks) < max_faces and self.since_detect >= self.redetect_every))
        if due and len(self.tracks) < max_faces:
            self._detect(acquire, rgb, max_faces, kinds, check)
        self.lost = [t for t in self.lost if self.frames - t.lost_at < self.max_missed]
        self.tracks.sort(key=lambda t: t.track_id)
        return list(self.tracks)

    def _detect(self, acquire, rgb, max_faces, kinds, check) -> None:
        h, w = rgb.shape[:2]
        self.since_detect = 0
        self.detections += 1
        found = face_search.search(acquire, rgb, kinds, check=check)
        boxes = [t.mesh.box() for t in self.tracks]
        new = []
        with acquire(SHORT) as det:
            for f in found:                       # highest score first
                if len(self.tracks) + len(new) >= max_faces:
                    break
                if any(face_search.same_face(f.box, b) for b in boxes):
                    continue                      # already tracked
                if check is not None:
                    check()
                m = landmark(self.solution(), det, rgb, roi_from_face(f, w, h))
                if m is None or any(face_search.same_face(m.box(), b) for b in boxes):
                    continue
                boxes.append(m.box())
                new.append(m)
        for m in left_to_right(new):
            old = self._revive(m, w, h)
            if old is not None:
                old.mesh, old.lost_at = m, 0
                self.tracks.append(old)
            else:
                self.tracks.append(Track(self.next_id, m))
                self.next_id += 1

    def _revive(self, m: mesh.Mesh, width: int, height: int) -> Optional[Track]:
        """A recently lost track whose last face lies where ``m`` is (centres closer than the larger face's
        side; the nearest one), removed from ``lost``."""
        scale = (width, height, width, height)
        box = [v * s for v, s in zip(m.box(), scale)]
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        best, dist = None, None
        for t in self.lost:
            b = [v * s for v, s in zip(t.mesh.box(), scale)]
            d = math.hypot(b[0] + b[2] / 2 - cx, b[1] + b[3] / 2 - cy)
            if d < max(b[2], b[3], box[2], box[3]) and (dist is None or d < dist):
                best, dist = t, d
        if best is not None:
            self.lost.remove(best)
        return best
