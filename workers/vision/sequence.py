"""ProcessMediaSequence: per-frame observations of a clip, then labels over frame ranges + summary features.

Each frame is analysed once as it arrives (face detector, pose tracker, hand tracker + gestures,
tracking-mode instances kept for the whole sequence) and only small per-frame records are kept.
At the end, each label ("face", "person", "hand" and each gesture name) becomes one SequenceLabel
per run of consecutive frames where it is present (gaps of up to `max_gap` frames are bridged),
with the mean per-frame confidence over the run as its confidence. Frame ranges use the client's
frame_number when it sent any, else the 0-based arrival index.
Summary features: frames, duration_ms, <label>_fraction (share of frames), faces_mean, faces_max,
hands_mean, and <feature>_mean for every per-frame feature the client sent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from protos import ml_inference_pb2 as pb

MAX_GAP = 1


@dataclass
class FrameRecord:
    index: int
    frame_number: int
    timestamp_ms: int
    scores: dict            # label -> confidence for labels present in this frame
    faces: int
    hands: int


@dataclass
class SequenceState:
    records: list = field(default_factory=list)
    client_features: dict = field(default_factory=dict)   # name -> [sum, count]

    def add(self, rec: FrameRecord, features) -> None:
        self.records.append(rec)
        for k, v in features.items():
            s = self.client_features.setdefault(k, [0.0, 0])
            s[0] += float(v)
            s[1] += 1

    def close(self) -> None:
        self.records.clear()


def runs(present: list[tuple[int, float]], max_gap: int = MAX_GAP) -> list[tuple[int, int, float]]:
    """present: sorted [(index, score)] -> [(first index, last index, mean score)]."""
    out = []
    start = prev = None
    acc: list[float] = []
    for i, s in present:
        if start is None:
            start, prev, acc = i, i, [s]
        elif i - prev <= max_gap + 1:
            prev = i
            acc.append(s)
        else:
            out.append((start, prev, sum(acc) / len(acc)))
            start, prev, acc = i, i, [s]
    if start is not None:
        out.append((start, prev, sum(acc) / len(acc)))
    return out


def summarise(state: SequenceState) -> pb.MediaSequenceResponse:
    recs = state.records
    resp = pb.MediaSequenceResponse(total_frames=len(recs))
    if not recs:
        return resp
    use_numbers = any(r.frame_number for r in recs)
    number = (lambda r: r.frame_number) if use_numbers else (lambda r: r.index)
    labels: dict[str, list[tuple[int, float]]] = {}
    for pos, r in enumerate(recs):
        for lab, sc in r.scores.items():
            labels.setdefault(lab, []).append((pos, sc))
    order = ["face", "person", "hand"]
    for lab in order + sorted(k for k in labels if k not in order):
        for a, b, conf in runs(labels.get(lab, [])):
            resp.labels.add(label=lab, confidence=conf, start_frame=number(recs[a]), end_frame=number(recs[b]))
    n = len(recs)
    f = resp.features
    f["frames"] = n
    f["duration_ms"] = float(recs[-1].timestamp_ms - recs[0].timestamp_ms)
    for lab in order + sorted(k for k in labels if k not in order):
        f[f"{lab}_fraction"] = len(labels.get(lab, [])) / n
    f["faces_mean"] = sum(r.faces for r in recs) / n
    f["faces_max"] = max(r.faces for r in recs)
    f["hands_mean"] = sum(r.hands for r in recs) / n
    for k, (s, c) in state.client_features.items():
        f[f"{k}_mean"] = s / c
    return resp
