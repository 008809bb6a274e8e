"""AutoFlip-style reframing: crop each frame to a target aspect ratio, following faces and people.

The crop keeps the full height (or width) of the frame and slides along the other axis. Its
centre follows the salient region (faces weighted by score, plus the person's box), but smoothly:
  - a dead zone: the crop does not move while the target stays within `deadzone` (10 %) of the
    crop's size from its centre (no jitter from detector noise);
  - otherwise it eases toward the target (factor 0.15 per frame), faster (0.5) when the subject
    would leave the crop, and never faster than `max_step` (6 %) of the frame's size per frame;
  - with no detection it holds its position.
Metadata (per frame): aspect_ratio "9:16" (default) | "1:1" | "4:5" | a number (width/height);
output_format rgb | bgr | rgba | png | jpeg | h264 (default: the input's raw format, rgb for others);
h264 is one Annex B access unit per answered frame from the stream's own libx264 encoder
(video_encoder.py, kept in the stream state and closed with it).
The returned VideoFrame echoes timestamp_ms / frame_number, and its metadata carries crop_x, crop_y,
crop_width, crop_height (pixels of the input), aspect_ratio and subjects (detections used). A crop too big
for the client's message limit comes back compressed or smaller (fit.py): its format/width/height say
how, its metadata `response_limit` says why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.context import WorkerError
from workers.vision import fit

H264_NAMES = ("h264", "avc", "h.264")
ENCODER_KEY = "h264_encoder"        # the stream state's key for its H264Encoder
NEED_IDR_KEY = "_h264_need_idr"     # the client missed an access unit: the next one must be an IDR


def parse_aspect(text: str, what: str) -> float:
    t = (text or "9:16").strip()
    try:
        if ":" in t:
            a, b = t.split(":", 1)
            v = float(a) / float(b)
        else:
            v = float(t)
    except (ValueError, ZeroDivisionError):
        raise WorkerError("INVALID_ARGUMENT", f"{what}: aspect_ratio {text!r} is not 'W:H' or a number") from None
    if not 0.05 <= v <= 20:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: aspect_ratio {text!r} is outside 1:20 .. 20:1")
    return v


def crop_size(w: int, h: int, aspect: float) -> tuple[int, int]:
    if w / h > aspect:                     # frame wider than target: full height
        cw = max(2, min(w, int(round(h * aspect / 2)) * 2))
        return cw, h
    ch = max(2, min(h, int(round(w / aspect / 2)) * 2))
    return w, ch


@dataclass
class Reframer:
    deadzone: float = 0.10
    ease: float = 0.15
    fast_ease: float = 0.5
    max_step: float = 0.06
    cx: float | None = None      # crop centre, pixels
    cy: float | None = None
    aspect: float | None = None

    def update(self, w: int, h: int, aspect: float, subjects: list[tuple[tuple, float]]) -> tuple[int, int, int, int]:
        """subjects: [((x, y, bw, bh) normalised, weight)]. Returns the crop (x, y, width, height) in pixels."""
        cw, ch = crop_size(w, h, aspect)
        if self.cx is None or self.aspect != aspect:
            self.cx, self.cy, self.aspect = w / 2, h / 2, aspect
            first = True
        else:
            first = False
        if subjects:
            wts = np.array([max(1e-3, s[1]) for s in subjects])
            cxs = np.array([(s[0][0] + s[0][2] / 2) * w for s in subjects])
            cys = np.array([(s[0][1] + s[0][3] / 2) * h for s in subjects])
            tx, ty = float((wts * cxs).sum() / wts.sum()), float((wts * cys).sum() / wts.sum())
            x0 = min(s[0][0] for s in subjects) * w
            x1 = max(s[0][0] + s[0][2] for s in subjects) * w
            y0 = min(s[0][1] for s in subjects) * h
            y1 = max(s[0][1] + s[0][3] for s in subjects) * h
            if first:
                self.cx, self.cy = tx, ty
            else:
                self.cx = self._follow(self.cx, tx, cw, w, x0, x1)
                self.cy = self._follow(self.cy, ty, ch, h, y0, y1)
        self.cx = float(np.clip(self.cx, cw / 2, w - cw / 2))
        self.cy = float(np.clip(self.cy, ch / 2, h - ch / 2))
        x = int(round(self.cx - cw / 2))
        y = int(round(self.cy - ch / 2))
        return max(0, min(x, w - cw)), max(0, min(y, h - ch)), cw, ch

    def _follow(self, c: float, target: float, size: int, full: int, lo: float, hi: float) -> float:
        if size >= full:
            return full / 2
        err = target - c
        if abs(err) <= self.deadzone * size:
            return c
        leaving = lo < c - size / 2 or hi > c + size / 2
        k = self.fast_ease if leaving else self.ease
        step = float(np.clip(k * err, -self.max_step * full, self.max_step * full))
        return c + step


def h264_output(state: dict, crop: np.ndarray, pts_ms: int, budget: int, what: str,
                threads: int = 1) -> tuple[bytes, str, int, int, str]:
    """Encode one crop with the stream's H.264 encoder: (data, format, width, height, note), as fit.fit_frame.

    The encoder is opened on the first h264 frame and again (starting with an IDR) when the crop's size
    changes. An access unit above `budget` cannot be cut down without breaking the frames after it: that
    frame goes as jpeg (fit.fit_frame; `note` says why) and the next access unit is an IDR, so the client's
    decoder starts again cleanly."""
    from workers.vision.video_encoder import H264Encoder, even_size
    h, w = crop.shape[:2]
    enc = state.get(ENCODER_KEY)
    if enc is not None and (enc.width, enc.height) != even_size(w, h):
        state.pop(ENCODER_KEY).close()
        enc = None
    if enc is None:
        enc = state[ENCODER_KEY] = H264Encoder(w, h, threads)
    data, _ = enc.encode(crop, pts_ms, keyframe=bool(state.pop(NEED_IDR_KEY, False)))
    if len(data) <= budget:
        return data, "h264", enc.width, enc.height, ""
    state[NEED_IDR_KEY] = True
    out, used, ow, oh, note = fit.fit_frame(crop, "jpeg", budget, what)
    why = (f"h264 {enc.width}x{enc.height} would be {len(data)} bytes, above the {budget} bytes the client's "
           f"message limit leaves: sent as {used} {ow}x{oh}" + (f" ({note})" if note else "") +
           "; the next h264 frame is an IDR")
    return out, used, ow, oh, why
