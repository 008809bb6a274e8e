"""Holistic tracking per person: pose (33 + world + joint angles), face mesh (478) and hands.

Every person of the frame comes from the multi-person pose tracker (multipose.py: person detector +
pose landmark model, stable track ids). For each, MediaPipe's legacy holistic solution (static-image
mode) runs on that person's ROI and adds the face mesh and the hands it finds there, mapped back to
the frame (multipose.holistic_parts); when it does not find the same person (a face turned away, a
small person), that person has a pose only.

The holistic graph has no handedness classifier: each hand is labelled by the pose side it is
attached to, with that wrist's pose visibility as its confidence. The pose names sides as seen in an
unmirrored frame, so the labels are swapped by default to follow the same convention as
StreamHandTracking (MediaPipe Hands assumes a mirrored, selfie-camera frame); metadata
`mirrored: "false"` keeps the pose's own sides. The face's confidence is the short-range face
detector's score on the face's own crop (face_landmarks' ROI from the mesh, upright, 256 px) for the
detection that overlaps the mesh (IoU >= 0.3); 0 when it sees no face there (the graph has no
per-face score; on the whole frame the detectors miss the small faces of people seen whole).

The response lists everyone in `people` (by track id); its `face`, `pose` and `hands` fields are the
first of them, for clients that expect one person.
"""
from __future__ import annotations

import numpy as np

from protos import ml_inference_pb2 as pb
from workers.vision import face_landmarks, faces, hands, landmarks, mesh, pose

L_WRIST, R_WRIST = 15, 16
FACE_IOU = 0.3


def face_confidence(face_solution, rgb: np.ndarray, points: np.ndarray) -> float:
    """The face detector's score for the mesh ``points`` (normalised to the frame) on the face's crop."""
    h, w = rgb.shape[:2]
    roi = face_landmarks.roi_from_points(points, w, h)
    img, m = face_landmarks.crop(rgb, roi)
    side = img.shape[0]
    px = points[:468, :2] * (w, h) @ m[:, :2].T + m[:, 2]
    lo, hi = px.min(axis=0) / side, px.max(axis=0) / side
    box = (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
    return max((f.score for f in faces.detect(face_solution, img) if mesh.iou(f.box, box) >= FACE_IOU), default=0.0)


def person_to_proto(pp, face_solution, rgb: np.ndarray, mirrored: bool) -> pb.HolisticPerson:
    """One multipose.PersonPose (with its holistic parts, if any) -> HolisticPerson."""
    height, width = rgb.shape[:2]
    out = pb.HolisticPerson(track_id=pp.track_id)
    out.pose.CopyFrom(pose.to_proto(pp.pose, pp.track_id))
    parts = pp.parts
    if parts is None:
        return out
    if parts.face_landmarks is not None:
        m = mesh.Mesh(landmarks.to_array(parts.face_landmarks), parts.face_landmarks)
        m.confidence = face_confidence(face_solution, rgb, m.points)
        out.face.CopyFrom(mesh.to_proto(m))
        out.face.track_id = pp.track_id
    vis = pp.pose.visibility if pp.pose is not None else np.zeros(33)
    for lm, label, idx in ((parts.left_hand_landmarks, "Left", L_WRIST), (parts.right_hand_landmarks, "Right", R_WRIST)):
        if lm is not None:
            if mirrored:
                label = "Right" if label == "Left" else "Left"
            out.hands.append(hands.to_proto(hands.from_holistic(lm, label, float(vis[idx]), width, height)))
    return out


def fill(resp: pb.HolisticTrackingResponse, people: list, face_solution, rgb: np.ndarray, mirrored: bool) -> None:
    """Every person into ``resp.people``; the first (lowest id) also into face / pose / hands.
    ``face_solution``: a short-range face detection solution (the face meshes' confidence)."""
    for pp in people:
        resp.people.append(person_to_proto(pp, face_solution, rgb, mirrored))
    if resp.people:
        first = resp.people[0]
        resp.pose.CopyFrom(first.pose)
        if first.HasField("face"):
            resp.face.CopyFrom(first.face)
        resp.hands.extend(first.hands)
