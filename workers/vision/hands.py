"""Hand landmarks (21 + world landmarks), handedness with its score, and the gesture -> `ml.HandDetection`.

Handedness follows MediaPipe's convention (the input is assumed mirrored, as from a selfie camera);
per-frame metadata `mirrored: "false"` swaps Left/Right for unmirrored camera frames.
`confidence` is the handedness classifier's score. At most one gesture per hand (see gestures.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from common.options import as_bool
from protos import ml_inference_pb2 as pb
from workers.vision import gestures, landmarks


@dataclass
class Hand:
    image: np.ndarray             # (21, 3) normalised
    world: Optional[np.ndarray]   # (21, 3) metres
    handedness: str
    score: float
    gesture: Optional[tuple[str, float]] = None
    raw_image: object = None
    raw_world: object = None

    def box(self) -> tuple[float, float, float, float]:
        return landmarks.bbox_of(self.image)


def _flip(label: str) -> str:
    return {"Left": "Right", "Right": "Left"}.get(label, label)


def from_lists(image_lists, world_lists, handedness_lists, width: int, height: int, mirrored: bool = True) -> list[Hand]:
    out = []
    for i, lm in enumerate(image_lists or []):
        img = landmarks.to_array(lm)
        world = landmarks.to_array(world_lists[i]) if world_lists and i < len(world_lists) else None
        label, score = "", 0.0
        if handedness_lists and i < len(handedness_lists) and handedness_lists[i].classification:
            cl = handedness_lists[i].classification[0]
            label, score = cl.label, float(cl.score)
        if not mirrored:
            label = _flip(label)
        px = landmarks.to_pixels(img, width, height)
        geom = world if world is not None else px
        h = Hand(img, world, label, score, gestures.classify(geom, px),
                 raw_image=lm, raw_world=world_lists[i] if world is not None else None)
        out.append(h)
    return out


def detect(solution, rgb: np.ndarray, mirrored: bool = True) -> list[Hand]:
    res = solution.process(rgb)
    return from_lists(res.multi_hand_landmarks, res.multi_hand_world_landmarks, res.multi_handedness,
                      rgb.shape[1], rgb.shape[0], mirrored)


def from_holistic(lm, label: str, score: float, width: int, height: int) -> Hand:
    """A hand from the holistic graph: no world landmarks and no handedness classifier there, so the
    label comes from the pose side it is attached to and the score is that pose wrist's visibility."""
    img = landmarks.to_array(lm)
    px = landmarks.to_pixels(img, width, height)
    return Hand(img, None, label, score, gestures.classify(px, px), raw_image=lm)


def to_proto(h: Hand) -> pb.HandDetection:
    m = pb.HandDetection(handedness=h.handedness, confidence=h.score)
    landmarks.fill(m.landmarks, h.raw_image)
    if h.raw_world is not None:
        landmarks.fill(m.world_landmarks, h.raw_world)
    if h.gesture is not None:
        m.gestures.add(name=h.gesture[0], confidence=h.gesture[1])
    return m


def is_mirrored(metadata) -> bool:
    """The frame's `mirrored` metadata (default true: a selfie camera); a value that is not a boolean is refused."""
    return as_bool((metadata or {}).get("mirrored"), True, name="metadata mirrored")
