"""The 7 gestures of MediaPipe's gesture recognizer from hand landmark geometry.

Closed_Fist, Open_Palm, Pointing_Up, Thumb_Down, Thumb_Up, Victory, ILoveYou - or none.

Hand *shape* comes only from ratios of distances and angles between joints of the 3-D hand
(world landmarks when available), so it is the same at any rotation of the hand and any distance
from the camera:
  - a finger's extension: how far its tip is from the wrist relative to its PIP joint
    (>= ~1.25 extended, <= ~1.0 curled), blended with how much it bends at PIP+DIP;
  - the thumb's extension: tip-to-middle-MCP over IP-to-middle-MCP distance, and how straight the
    thumb's chain is (tip-to-CMC over the chain's length);
  - Closed_Fist / Thumb_Up / Thumb_Down need the four fingers *folded* (tip back near the wrist and
    a strong bend), stricter than "not extended", so a hooked index finger is not a fist;
  - Victory also needs the index and middle fingers spread apart (angle between them).
Three gestures are defined by a *direction* in the image as well (Thumb_Up / Thumb_Down / Pointing_Up):
that direction is the angle of the thumb / index finger to the image's vertical, measured on the
image landmarks; everything else about them is rotation-invariant.

Each requirement is a soft membership in [0, 1]; a gesture's confidence is the lowest membership
of its requirements (fuzzy AND), so it comes from the geometry. The best gesture is returned if its
confidence is >= `MIN_CONFIDENCE`, else none: at most one gesture per hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

GESTURES = ("Closed_Fist", "Open_Palm", "Pointing_Up", "Thumb_Down", "Thumb_Up", "Victory", "ILoveYou")
MIN_CONFIDENCE = 0.5

WRIST = 0
FINGERS = {  # name: (mcp, pip, dip, tip)
    "index": (5, 6, 7, 8),
    "middle": (9, 10, 11, 12),
    "ring": (13, 14, 15, 16),
    "pinky": (17, 18, 19, 20),
}
THUMB = (1, 2, 3, 4)  # cmc, mcp, ip, tip


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at lo, 1 at hi, linear between (works for lo > hi as a falling ramp)."""
    if hi == lo:
        return float(x >= hi)
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu < 1e-12 or nv < 1e-12:
        return 0.0
    return math.degrees(math.acos(float(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))))


@dataclass
class HandShape:
    extension: dict          # finger name -> [0, 1] (thumb included)
    folded: dict             # finger name -> [0, 1], fingers only
    spread_index_middle: float  # degrees
    thumb_up: float          # [0, 1]: thumb points up in the image
    thumb_down: float
    index_up: float          # index finger points up in the image


def _reach_and_bend(p: np.ndarray, finger: str):
    """(tip-to-wrist / pip-to-wrist distance, bend at pip + dip in degrees) of a finger; None when the pip
    lies on the wrist (degenerate landmarks)."""
    mcp, pip, dip, tip = FINGERS[finger]
    d_pip = np.linalg.norm(p[pip] - p[WRIST])
    if d_pip < 1e-12:
        return None
    ratio = np.linalg.norm(p[tip] - p[WRIST]) / d_pip
    bend = _angle(p[dip] - p[pip], p[pip] - p[mcp]) + _angle(p[tip] - p[dip], p[dip] - p[pip])
    return ratio, bend


def finger_extension(p: np.ndarray, finger: str) -> float:
    rb = _reach_and_bend(p, finger)
    if rb is None:
        return 0.0
    return 0.5 * _ramp(rb[0], 1.0, 1.25) + 0.5 * _ramp(rb[1], 110.0, 50.0)


def finger_folded(p: np.ndarray, finger: str) -> float:
    """Stricter than 'not extended': the tip is pulled back toward the wrist and the finger bends hard
    (a fist), so a half-curled (hooked) finger does not count as folded."""
    rb = _reach_and_bend(p, finger)
    if rb is None:
        return 0.0
    return 0.5 * _ramp(rb[0], 1.05, 0.8) + 0.5 * _ramp(rb[1], 90.0, 140.0)


def thumb_extension(p: np.ndarray) -> float:
    cmc, mcp, ip, tip = THUMB
    d_ip = np.linalg.norm(p[ip] - p[9])
    reach = np.linalg.norm(p[tip] - p[9]) / d_ip if d_ip > 1e-12 else 0.0
    chain_len = sum(np.linalg.norm(p[b] - p[a]) for a, b in ((cmc, mcp), (mcp, ip), (ip, tip)))
    straight = np.linalg.norm(p[tip] - p[cmc]) / chain_len if chain_len > 1e-12 else 0.0
    return 0.7 * _ramp(reach, 1.05, 1.2) + 0.3 * _ramp(straight, 0.93, 0.98)


def _direction_up(img: np.ndarray, a: int, b: int) -> float:
    """cos of the angle between the image vector a->b and the image's up direction (y grows down)."""
    v = img[b, :2] - img[a, :2]
    n = np.linalg.norm(v)
    return float(-v[1] / n) if n > 1e-12 else 0.0


def shape(world: np.ndarray, image_px: np.ndarray) -> HandShape:
    """world: (21, 3) rotation/scale-free geometry (world landmarks, or pixel-scaled image landmarks);
    image_px: (21, 2+) image landmarks in pixels (x right, y down) for the up/down direction."""
    ext = {f: finger_extension(world, f) for f in FINGERS}
    ext["thumb"] = thumb_extension(world)
    spread = _angle(world[8] - world[5], world[12] - world[9])
    up_t = _direction_up(image_px, 2, 4)
    up_i = _direction_up(image_px, 5, 8)
    cos30, cos70 = math.cos(math.radians(30)), math.cos(math.radians(70))
    folded = {f: finger_folded(world, f) for f in FINGERS}
    return HandShape(ext, folded, spread,
                     thumb_up=_ramp(up_t, cos70, cos30), thumb_down=_ramp(-up_t, cos70, cos30),
                     index_up=_ramp(up_i, cos70, cos30))


def scores(s: HandShape) -> dict[str, float]:
    e = s.extension
    c = {k: 1.0 - v for k, v in e.items()}
    four_curled = min(s.folded.values())
    four_open = min(e["index"], e["middle"], e["ring"], e["pinky"])
    spread = _ramp(s.spread_index_middle, 5.0, 12.0)
    return {
        "Closed_Fist": min(four_curled, c["thumb"]),
        "Open_Palm": min(four_open, 0.3 + 0.7 * e["thumb"]),
        "Pointing_Up": min(e["index"], c["middle"], c["ring"], c["pinky"], s.index_up),
        "Thumb_Up": min(four_curled, e["thumb"], s.thumb_up),
        "Thumb_Down": min(four_curled, e["thumb"], s.thumb_down),
        "Victory": min(e["index"], e["middle"], c["ring"], c["pinky"], spread),
        "ILoveYou": min(e["thumb"], e["index"], e["pinky"], c["middle"], c["ring"]),
    }


def classify(world: np.ndarray, image_px: np.ndarray, min_confidence: float = MIN_CONFIDENCE
             ) -> Optional[tuple[str, float]]:
    """(gesture name, confidence) or None."""
    sc = scores(shape(np.asarray(world, dtype=np.float64), np.asarray(image_px, dtype=np.float64)))
    name = max(sc, key=sc.get)
    return (name, sc[name]) if sc[name] >= min_confidence else None
