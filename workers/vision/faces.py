"""Face detection (BlazeFace short/full range) -> `ml.FaceDetection` messages.

Boxes and keypoints are normalised to [0, 1] of the frame; `confidence` is the detector's own score
per face; the 6 keypoints are named as MediaPipe's FaceKeyPoint enum (keypoint confidence = the
face's score: the model has no per-keypoint score).

`detect` is one pass of one model (streams). `face_search.search` runs both models, tiles and
verifies each box (DetectFaces). `face_models` reads the `face_model` metadata key for either.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protos import ml_inference_pb2 as pb

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")

# face_model value -> the solution kinds it runs (solutions.py)
SHORT, FULL = "face_detection_short", "face_detection_full"
MODEL_CHOICES = {"short": (SHORT,), "short_range": (SHORT,), "0": (SHORT,),
                 "full": (FULL,), "full_range": (FULL,), "long": (FULL,), "1": (FULL,),
                 "both": (SHORT, FULL)}


@dataclass
class Face:
    box: tuple[float, float, float, float]   # x, y, w, h normalised
    score: float
    keypoints: list[tuple[float, float]]


def detect(solution, rgb: np.ndarray) -> list[Face]:
    res = solution.process(rgb)
    out = []
    for det in res.detections or []:
        rb = det.location_data.relative_bounding_box
        x0, y0 = max(0.0, rb.xmin), max(0.0, rb.ymin)
        x1, y1 = min(1.0, rb.xmin + rb.width), min(1.0, rb.ymin + rb.height)
        if x1 <= x0 or y1 <= y0:
            continue
        kps = [(k.x, k.y) for k in det.location_data.relative_keypoints]
        out.append(Face((x0, y0, x1 - x0, y1 - y0), float(det.score[0]) if det.score else 0.0, kps))
    out.sort(key=lambda f: -f.score)
    return out


def to_proto(face: Face) -> pb.FaceDetection:
    m = pb.FaceDetection(x=face.box[0], y=face.box[1], width=face.box[2], height=face.box[3], confidence=face.score)
    for name, (x, y) in zip(KEYPOINT_NAMES, face.keypoints):
        m.keypoints.add(x=x, y=y, confidence=face.score, name=name)
    return m


def face_models(metadata, default: str) -> tuple[str, ...]:
    """metadata 'face_model': 'short' (faces within ~2 m), 'full' (small / distant faces) or 'both'.

    Returns the solution kinds to run; ``default`` when the key is absent or empty. Raises ValueError
    naming the accepted values for anything else.
    """
    v = ((metadata.get("face_model", "") if metadata else "") or default).strip().lower()
    if v not in MODEL_CHOICES:
        raise ValueError(f"metadata face_model={v!r}: use 'short', 'full' or 'both'")
    return MODEL_CHOICES[v]

