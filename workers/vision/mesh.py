"""Face mesh (478 landmarks with iris refinement) -> `ml.FaceMesh`.

`contours` is MediaPipe's FACEMESH_CONTOURS edge list flattened as pairs [a0, b0, a1, b1, ...]
(lips, eyes, eyebrows, face oval), so a client can draw the lines. The mesh graph exposes no
per-face score, so `confidence` is a face detector's score: for StreamFaceMesh / StreamIrisTracking
the short-range detector's on the face's own crop (face_landmarks.py, one mesh per face); for
holistic (`score_with`) the score of the detector's box that overlaps the mesh best (IoU-weighted; 0
when the detector does not see the face). `track_id` (StreamFaceMesh) is the face's id in its stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protos import ml_inference_pb2 as pb
from workers.vision import landmarks

_CONTOURS: list[int] = []


def contour_indices() -> list[int]:
    global _CONTOURS
    if not _CONTOURS:
        from mediapipe.python.solutions import face_mesh_connections as c
        _CONTOURS = [i for edge in sorted(c.FACEMESH_CONTOURS) for i in edge]
    return _CONTOURS


@dataclass
class Mesh:
    points: np.ndarray       # (478, 3) normalised
    raw: object
    confidence: float = 0.0

    def box(self) -> tuple[float, float, float, float]:
        return landmarks.bbox_of(self.points[:468])


def iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def detect(solution, rgb: np.ndarray) -> list[Mesh]:
    res = solution.process(rgb)
    return [Mesh(landmarks.to_array(lm), lm) for lm in (res.multi_face_landmarks or [])]


def score_with(meshes: list[Mesh], faces) -> None:
    """Set each mesh's confidence from the best-overlapping face detection (faces: faces.Face list)."""
    for m in meshes:
        box = m.box()
        best = 0.0
        for f in faces:
            o = iou(box, f.box)
            if o > 0.3:
                best = max(best, f.score * min(1.0, o / 0.6))
        m.confidence = best


def to_proto(m: Mesh) -> pb.FaceMesh:
    msg = pb.FaceMesh(confidence=m.confidence)
    landmarks.fill(msg.landmarks, m.raw)
    msg.contours.extend(contour_indices())
    return msg


def from_array(points: np.ndarray, confidence: float = 0.0, track_id: int = 0) -> pb.FaceMesh:
    msg = pb.FaceMesh(confidence=confidence, track_id=track_id)
    msg.landmarks.extend(landmarks.landmark_msgs(points))
    msg.contours.extend(contour_indices())
    return msg
