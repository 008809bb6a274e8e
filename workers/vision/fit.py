"""Vision outputs that fit the client's message limit (worker option `max_response_bytes`, --max-response-mb).

The orchestrator's client reads at most 4 MiB per message, and raw outputs grow with the frame: a
1080p rgb composite is 6.2 MB, the 9:16 AutoFlip crop of a 4K frame 7.9 MB, a 4K mask 8.3 MB. A
stream should keep answering every frame (a gRPC status would end the whole stream), so an output
that would not fit is made smaller, losing as little as possible:
- a frame (AutoFlip crop, segmentation composite): the requested encoding if it fits; otherwise the
  same pixels compressed - png when the frame has a real alpha channel (lossless), else jpeg quality
  90, then 75 - and only then the same encoding at a lower resolution. The response's format and
  size fields always describe what was sent (VideoFrame.format/width/height,
  SegmentationResponse.frame_format/frame_width/frame_height); `fit_frame` also returns a note
  saying what changed and why (AutoFlip puts it in the frame's metadata `response_limit`).
- a mask keeps its raw 1-channel format ("binary" / "alpha") and is downscaled to fit; its
  width/height fields give its size. The selfie model's own mask is 256x256 (landscape 144x256):
  a frame-sized mask is that one upsampled, so a smaller mask loses nothing the model saw.
Only when even a 16-pixel image cannot fit (a limit far below any real client's) is the frame
refused with RESOURCE_EXHAUSTED naming the flag.
"""
from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np

from workers.context import WorkerError
from workers.vision import frames

DEFAULT_MAX_RESPONSE_BYTES = 4 * 2**20
FIELD_OVERHEAD = 16      # tag + length of one bytes field (a length varint is at most 5 bytes), generous
MIN_SIDE = 16
MAX_TRIES = 12


def max_response_bytes(options: dict) -> int:
    return int(options.get("max_response_bytes") or DEFAULT_MAX_RESPONSE_BYTES)


def _encode(img: np.ndarray, fmt: str, quality: Optional[int]) -> bytes:
    if fmt == "png":
        bgr = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".png", bgr)
    else:
        bgr = cv2.cvtColor(img, cv2.COLOR_RGBA2BGR if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality or 90)])
    if not ok:
        raise WorkerError("INTERNAL", f"could not encode the output frame as {fmt}")
    return buf.tobytes()


def _has_alpha(img: np.ndarray) -> bool:
    return img.ndim == 3 and img.shape[2] == 4 and bool((img[..., 3] != 255).any())


def _refuse(what: str, nbytes: int, budget: int) -> WorkerError:
    return WorkerError("RESOURCE_EXHAUSTED",
                       f"{what}: the output is {nbytes} bytes even at {MIN_SIDE} px, above the {budget} bytes left "
                       f"for it under the client's message limit (--max-response-mb): raise --max-response-mb")


def fit_frame(img: np.ndarray, fmt: str, budget: int, what: str = "frame") -> tuple[bytes, str, int, int, str]:
    """Encode RGB(A) `img` as `fmt` in at most `budget` bytes: (data, format used, width, height, note).

    `note` is "" when the requested encoding fits, else what was changed and why."""
    h, w = img.shape[:2]
    data, used = frames.encode(img, fmt)
    if len(data) <= budget:
        return data, used, w, h, ""
    first = f"{used} {w}x{h} would be {len(data)} bytes, above the {budget} bytes the client's message limit leaves"
    steps = [("png", None)] if _has_alpha(img) else [("jpeg", 90), ("jpeg", 75)]
    for f, q in steps:
        if f == used and (q is None or fmt.lower() not in ("jpeg", "jpg")):
            continue   # png was the request; its size is known
        data = _encode(img, f, q)
        if len(data) <= budget:
            return data, f, w, h, f"{first}: sent as {f}" + (f" quality {q}" if q else "")
    f, q = steps[-1]
    scale = 1.0
    for _ in range(MAX_TRIES):
        scale *= min(0.9, 0.95 * math.sqrt(budget / max(1, len(data))))
        nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
        if min(nw, nh) < MIN_SIDE:
            break
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        data = _encode(small, f, q)
        if len(data) <= budget:
            return data, f, nw, nh, f"{first}: sent as {f}" + (f" quality {q}" if q else "") + f" at {nw}x{nh}"
    raise _refuse(what, len(data), budget)


def mask_size(w: int, h: int, budget: int, what: str = "frame") -> tuple[int, int]:
    """The largest size with the frame's aspect whose 1-byte-per-pixel mask fits in `budget` bytes."""
    if w * h <= budget:
        return w, h
    scale = math.sqrt(budget / (w * h))
    nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
    while nw * nh > budget and nw > 1 and nh > 1:
        nw, nh = max(1, nw - 1), max(1, nh - 1)
    if min(nw, nh) < MIN_SIDE and min(w, h) >= MIN_SIDE:
        raise _refuse(f"{what} mask", MIN_SIDE * MIN_SIDE, budget)
    return nw, nh
