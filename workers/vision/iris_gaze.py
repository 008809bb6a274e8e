"""Iris landmarks per eye and gaze direction (per eye and combined) with the head's orientation.

Eyes are named from the person's point of view, as MediaPipe names them ("left" = the person's
left eye, on the image's right side in an unmirrored frame).

Head orientation comes from the face mesh's own 3-D geometry (pixel-scaled x, y and MediaPipe's
relative depth z): the face's x axis runs from the right eye's outer corner to the left eye's,
its y axis from the forehead (10) to the chin (152) made orthogonal to x, and z = x × y points
into the head. That rotation gives head yaw/pitch/roll.

Gaze per eye: the eyeball centre sits behind the midpoint of the eye corners with a radius of
~0.45 × the eye's width; the iris centre's offset from that midpoint, measured along the *face's*
x and y axes (not the image's), gives the eye's rotation in the head, which is then rotated by the
head orientation into camera coordinates. So a person who turns the head but keeps looking into
the lens has a gaze near (0, 0, -1), and a frontal face with the irises shifted has the gaze
shifted. The combined gaze is the openness-weighted mean of the two eyes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protos import ml_inference_pb2 as pb
from workers.vision import landmarks

# (outer corner, inner corner, upper lid, lower lid, iris centre, iris ring)
EYES = {
    "right": dict(outer=33, inner=133, upper=159, lower=145, iris=468, ring=(469, 470, 471, 472)),
    "left": dict(outer=263, inner=362, upper=386, lower=374, iris=473, ring=(474, 475, 476, 477)),
}
EYE_RADIUS_OVER_WIDTH = 0.45
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1

_EYE_CONTOURS: dict[str, list[int]] = {}


def eye_contour(eye: str) -> list[int]:
    if eye not in _EYE_CONTOURS:
        from mediapipe.python.solutions import face_mesh_connections as c
        edges = c.FACEMESH_LEFT_EYE if eye == "left" else c.FACEMESH_RIGHT_EYE
        _EYE_CONTOURS[eye] = sorted({i for e in edges for i in e})
    return _EYE_CONTOURS[eye]


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 1e-12 else v


def head_axes(p: np.ndarray) -> np.ndarray:
    """3x3 rotation, columns = face x (toward the person's left), y (down the face), z (into the head),
    from pixel-scaled mesh points (N, 3)."""
    x = _unit(p[EYES["left"]["outer"]] - p[EYES["right"]["outer"]])
    yd = p[CHIN] - p[FOREHEAD]
    y = _unit(yd - np.dot(yd, x) * x)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=1)


def angles_of(direction: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees of a camera-frame direction: yaw > 0 toward the image right,
    pitch > 0 upward; a direction toward the camera is (0, 0)."""
    dx, dy, dz = direction
    yaw = math.degrees(math.atan2(dx, -dz))
    pitch = math.degrees(math.atan2(-dy, math.hypot(dx, dz)))
    return yaw, pitch


def head_pose(R: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees of the head: the direction the face points (-z axis)."""
    yaw, pitch = angles_of(-R[:, 2])
    roll = math.degrees(math.atan2(R[1, 0], R[0, 0]))
    return yaw, pitch, roll


@dataclass
class EyeGaze:
    eye: str
    direction: np.ndarray    # unit vector, camera frame
    yaw: float
    pitch: float
    openness: float          # lid gap / eye width
    confidence: float


def eye_gaze(p: np.ndarray, R: np.ndarray, eye: str, face_conf: float = 1.0) -> EyeGaze:
    e = EYES[eye]
    outer, inner = p[e["outer"]], p[e["inner"]]
    width = np.linalg.norm(outer - inner)
    mid = (outer + inner) / 2.0
    radius = EYE_RADIUS_OVER_WIDTH * width if width > 1e-9 else 1.0
    iris = p[list(e["ring"])].mean(axis=0) * 0.5 + p[e["iris"]] * 0.5
    d = iris - mid
    gx = float(np.clip(np.dot(d, R[:, 0]) / radius, -0.95, 0.95))
    gy = float(np.clip(np.dot(d, R[:, 1]) / radius, -0.95, 0.95))
    gz = -math.sqrt(max(0.0, 1.0 - gx * gx - gy * gy))      # toward the camera in the head frame
    direction = _unit(R @ np.array([gx, gy, gz]))
    openness = float(np.linalg.norm(p[e["upper"]] - p[e["lower"]]) / width) if width > 1e-9 else 0.0
    conf = face_conf * float(np.clip((openness - 0.08) / (0.2 - 0.08), 0.0, 1.0))
    yaw, pitch = angles_of(direction)
    return EyeGaze(eye, direction, yaw, pitch, openness, conf)


def combine(eyes: list[EyeGaze]) -> EyeGaze:
    w = np.array([max(g.confidence, 1e-3) for g in eyes])
    d = _unit(sum(wi * g.direction for wi, g in zip(w, eyes)))
    yaw, pitch = angles_of(d)
    return EyeGaze("both", d, yaw, pitch, float(np.mean([g.openness for g in eyes])),
                   float(max(g.confidence for g in eyes)))


def gaze_proto(g: EyeGaze) -> pb.GazeDirection:
    return pb.GazeDirection(x=float(g.direction[0]), y=float(g.direction[1]), z=float(g.direction[2]),
                            yaw=g.yaw, pitch=g.pitch, confidence=g.confidence)


def analyse(points: np.ndarray, width: int, height: int, face_conf: float = 1.0):
    """(per-eye list of (eye name, EyeGaze), combined EyeGaze, (yaw, pitch, roll)) from (478, 3) points."""
    p = landmarks.to_pixels(points, width, height)
    R = head_axes(p)
    eyes = [eye_gaze(p, R, name, face_conf) for name in ("left", "right")]
    return eyes, combine(eyes), head_pose(R)


def to_response(points: np.ndarray, width: int, height: int, face_conf: float, resp) -> None:
    """Fill one face's eyes, combined gaze and head pose into ``resp``: an IrisTrackingResponse (its first
    face) or an IrisFace (each further face, ``more_faces``), which have these fields alike."""
    eyes, both, (yaw, pitch, roll) = analyse(points, width, height, face_conf)
    for g in eyes:
        e = EYES[g.eye]
        msg = resp.eyes.add(eye=g.eye, confidence=g.confidence)
        msg.iris_landmarks.extend(landmarks.landmark_msgs(points[[e["iris"], *e["ring"]]]))
        msg.eye_landmarks.extend(landmarks.landmark_msgs(points[eye_contour(g.eye)]))
        msg.gaze.CopyFrom(gaze_proto(g))
    resp.combined_gaze.CopyFrom(gaze_proto(both))
    nose = points[NOSE_TIP]
    resp.head_pose.CopyFrom(pb.Pose3D(x=float(nose[0]), y=float(nose[1]), z=float(nose[2]),
                                      yaw=yaw, pitch=pitch, roll=roll))
