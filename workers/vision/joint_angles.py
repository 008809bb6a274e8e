"""Joint angles in degrees from 3-D pose world landmarks (metres): 180 = straight limb.

Each angle is the angle at the middle landmark between the two limb segments, so it does not depend
on the camera's position, the person's distance or rotation. Confidence = the lowest visibility of
the three landmarks involved.
"""
from __future__ import annotations

import math

import numpy as np

# MediaPipe pose landmark indices.
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28
L_INDEX, R_INDEX, L_FOOT, R_FOOT = 19, 20, 31, 32

JOINTS = {
    "left_elbow": (L_SHOULDER, L_ELBOW, L_WRIST),
    "right_elbow": (R_SHOULDER, R_ELBOW, R_WRIST),
    "left_shoulder": (L_HIP, L_SHOULDER, L_ELBOW),
    "right_shoulder": (R_HIP, R_SHOULDER, R_ELBOW),
    "left_hip": (L_SHOULDER, L_HIP, L_KNEE),
    "right_hip": (R_SHOULDER, R_HIP, R_KNEE),
    "left_knee": (L_HIP, L_KNEE, L_ANKLE),
    "right_knee": (R_HIP, R_KNEE, R_ANKLE),
    "left_ankle": (L_KNEE, L_ANKLE, L_FOOT),
    "right_ankle": (R_KNEE, R_ANKLE, R_FOOT),
    "left_wrist": (L_ELBOW, L_WRIST, L_INDEX),
    "right_wrist": (R_ELBOW, R_WRIST, R_INDEX),
}


def angle_at(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Angle ABC in degrees."""
    u, v = a - b, c - b
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu < 1e-9 or nv < 1e-9:
        return float("nan")
    return math.degrees(math.acos(float(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))))


def compute(world: np.ndarray, visibility: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """{joint name: (degrees, confidence)} for the joints above, from (33, 3) world landmarks."""
    out = {}
    for name, (a, b, c) in JOINTS.items():
        deg = angle_at(world[a], world[b], world[c])
        if math.isnan(deg):
            continue
        conf = float(min(visibility[a], visibility[b], visibility[c])) if visibility is not None else 1.0
        out[name] = (deg, conf)
    return out
