"""Joint angles in degrees from 3-D pose world landmarks (metres): 180 = straight limb.

Each angle is the angle at the middle landmark between the two limb segments, so it does not depend
on the camera's position, the person's distance or rotation. Confidence = the lowest visibility of
the three landmarks involved.
"""
from __future__ import annotations

import math

import numpy as np

# MediaPipe pose landmark indices of each side's body points.
SIDES = {
    "left": dict(shoulder=11, elbow=13, wrist=15, index=19, hip=23, knee=25, ankle=27, foot=31),
    "right": dict(shoulder=12, elbow=14, wrist=16, index=20, hip=24, knee=26, ankle=28, foot=32),
}
# joint -> (the point before it, the joint itself, the point after it)
CHAINS = {
    "elbow": ("shoulder", "elbow", "wrist"),
    "shoulder": ("hip", "shoulder", "elbow"),
    "hip": ("shoulder", "hip", "knee"),
    "knee": ("hip", "knee", "ankle"),
    "ankle": ("knee", "ankle", "foot"),
    "wrist": ("elbow", "wrist", "index"),
}
# "left_elbow" -> (11, 13, 15), ...: every joint, left then right
JOINTS = {f"{side}_{joint}": tuple(SIDES[side][point] for point in chain)
          for joint, chain in CHAINS.items() for side in SIDES}


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
