"""Holistic tracking: face mesh (478), pose (33 + world + joint angles) and both hands in one response.

The holistic graph has no handedness classifier: each hand is labelled by the pose side it is
attached to, with that wrist's pose visibility as its confidence. The pose names sides as seen in an
unmirrored frame, so the labels are swapped by default to follow the same convention as
StreamHandTracking (MediaPipe Hands assumes a mirrored, selfie-camera frame); metadata
`mirrored: "false"` keeps the pose's own sides. The face's confidence comes from the face detector.
"""
from __future__ import annotations

import numpy as np

from protos import ml_inference_pb2 as pb
from workers.vision import hands, mesh, pose

L_WRIST, R_WRIST = 15, 16


def analyse(solution, rgb: np.ndarray, faces_found: list, resp: pb.HolisticTrackingResponse,
            mirrored: bool = True) -> dict:
    """Fill resp; returns {'face': Mesh|None, 'pose': Pose|None, 'hands': [Hand]} for callers that draw."""
    res = solution.process(rgb)
    h, w = rgb.shape[:2]
    out = {"face": None, "pose": None, "hands": []}
    if res.face_landmarks is not None:
        m = mesh.Mesh(np.array([(p.x, p.y, p.z) for p in res.face_landmarks.landmark]), res.face_landmarks)
        mesh.score_with([m], faces_found)
        resp.face.CopyFrom(mesh.to_proto(m))
        out["face"] = m
    p = pose.from_result(res.pose_landmarks, res.pose_world_landmarks)
    vis = p.visibility if p is not None else np.zeros(33)
    if p is not None:
        resp.pose.CopyFrom(pose.to_proto(p))
        out["pose"] = p
    for lm, label, idx in ((res.left_hand_landmarks, "Left", L_WRIST), (res.right_hand_landmarks, "Right", R_WRIST)):
        if lm is not None:
            if mirrored:
                label = "Right" if label == "Left" else "Left"
            hd = hands.from_holistic(lm, label, float(vis[idx]), w, h)
            resp.hands.append(hands.to_proto(hd))
            out["hands"].append(hd)
    return out
