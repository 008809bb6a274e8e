"""Body pose (BlazePose, 33 landmarks + 3-D world landmarks) -> `ml.PoseDetection` with joint angles.

A Pose comes from the legacy pose solution (one person: `detect`, `from_result`) or from the landmark
model run on one person's region (`from_landmarks`, pose_landmarker.py; multipose.py for every
person). `confidence` is the mean visibility of the upper-body and hip landmarks (0-24): the graph
exposes no other per-pose score. `to_proto` adds the joint angles, the landmark box and the stream's
track id when given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from protos import ml_inference_pb2 as pb
from workers.vision import joint_angles, landmarks


@dataclass
class Pose:
    image: np.ndarray            # (33, 3) normalised
    world: np.ndarray            # (33, 3) metres
    visibility: np.ndarray       # (33,)
    score: float
    raw_image: object = None
    raw_world: object = None
    presence: Optional[np.ndarray] = None     # (33,) when known (landmark model)

    def box(self, min_visibility: float = 0.3) -> tuple[float, float, float, float]:
        """Normalised (x, y, w, h) around the visible landmarks, padded a little."""
        pts = self.image[self.visibility >= min_visibility]
        if len(pts) < 3:
            pts = self.image
        x, y, w, h = landmarks.bbox_of(pts)
        pad_x, pad_y = 0.08 * w, 0.08 * h
        x0, y0 = max(0.0, x - pad_x), max(0.0, y - pad_y)
        x1, y1 = min(1.0, x + w + pad_x), min(1.0, y + h + pad_y)
        return x0, y0, x1 - x0, y1 - y0


def from_result(pose_landmarks, pose_world_landmarks) -> Optional[Pose]:
    if pose_landmarks is None:
        return None
    img = landmarks.to_array(pose_landmarks)
    vis = landmarks.visibility(pose_landmarks)
    world = landmarks.to_array(pose_world_landmarks) if pose_world_landmarks is not None else np.zeros_like(img)
    return Pose(img, world, vis, float(vis[:25].mean()), pose_landmarks, pose_world_landmarks)


def detect(solution, rgb: np.ndarray) -> Optional[Pose]:
    res = solution.process(rgb)
    return from_result(res.pose_landmarks, res.pose_world_landmarks)


def from_landmarks(lm) -> Pose:
    """A Pose from pose_landmarker.Landmarks (frame-normalised image landmarks, world in metres)."""
    return Pose(lm.image, lm.world, lm.visibility, float(lm.visibility[:25].mean()), presence=lm.presence)


def _fill_arrays(dst, arr: np.ndarray, visibility: np.ndarray, presence: Optional[np.ndarray]) -> None:
    for i, (x, y, z) in enumerate(arr):
        m = dst.add(x=float(x), y=float(y), z=float(z), visibility=float(visibility[i]))
        if presence is not None:
            m.presence = float(presence[i])


def to_proto(p: Pose, track_id: int = 0) -> pb.PoseDetection:
    m = pb.PoseDetection(confidence=p.score, track_id=track_id)
    if p.raw_image is not None:
        landmarks.fill(m.landmarks, p.raw_image)
    else:
        _fill_arrays(m.landmarks, p.image, p.visibility, p.presence)
    has_world = p.raw_world is not None or p.raw_image is None
    if p.raw_world is not None:
        landmarks.fill(m.world_landmarks, p.raw_world)
    elif has_world:
        _fill_arrays(m.world_landmarks, p.world, p.visibility, p.presence)
    if has_world:
        for name, (deg, conf) in joint_angles.compute(p.world, p.visibility).items():
            m.joint_angles.add(name=name, degrees=deg, confidence=conf)
    x, y, w, h = p.box()
    m.box.CopyFrom(pb.BoundingBox(x=x, y=y, width=w, height=h))
    return m
