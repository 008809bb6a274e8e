"""Selfie segmentation: person mask, alpha matte, background blur and background replacement.

Per-frame options come from `VideoFrame.metadata` (documented in docs/vision.md):
  output            mask (default) | alpha | blur | replace | cutout
  threshold         0..1, default 0.5 (binary mask cut)
  blur_radius       pixels, default 21 (background blur)
  background_color  "#RRGGBB" or "R,G,B" (replace; default #00FF00) - used when no image was sent
  frame_format      rgb (default) | rgba | png | jpeg  - encoding of the composited frame
  model             general (default, 256x256) | landscape (144x256, faster)
`VideoFrame.background_image` (png/jpeg, or raw rgb of the frame's size) is sent once and kept for
the rest of the stream; it is resized to each frame's size.
The response's `mask` is always the 1-channel mask at the frame's size ("binary": 0/255 for
output mask/blur/replace, "alpha": 0..255 for alpha/cutout); composites use the soft mask for
feathered edges and come back in `frame_data` / `frame_width` / `frame_height` / `frame_format`.
Under the client's message limit (`max_bytes`, --max-response-mb) the mask may come back smaller than
the frame (its width/height say so) and the composite compressed or smaller: see fit.py.
"""
from __future__ import annotations

import cv2
import numpy as np

from protos import ml_inference_pb2 as pb
from workers.context import WorkerError
from workers.vision import fit, frames

OUTPUTS = ("mask", "alpha", "blur", "replace", "cutout")


def parse_color(text: str, what: str) -> tuple[int, int, int]:
    t = text.strip()
    try:
        if t.startswith("#") and len(t) == 7:
            return int(t[1:3], 16), int(t[3:5], 16), int(t[5:7], 16)
        parts = [int(float(x)) for x in t.split(",")]
        if len(parts) == 3 and all(0 <= v <= 255 for v in parts):
            return parts[0], parts[1], parts[2]
    except ValueError:
        pass
    raise WorkerError("INVALID_ARGUMENT", f"{what}: background_color {text!r} is not '#RRGGBB' or 'R,G,B' (0-255)")


def _float(meta, key: str, default: float, lo: float, hi: float, what: str) -> float:
    if key not in meta or meta[key] == "":
        return default
    try:
        v = float(meta[key])
    except ValueError:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: metadata {key}={meta[key]!r} is not a number") from None
    if not lo <= v <= hi:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: metadata {key}={v} is outside [{lo}, {hi}]")
    return v


def model_kind(meta) -> str:
    return "selfie_landscape" if meta.get("model", "").lower() == "landscape" else "selfie"


def set_background(state: dict, data: bytes, width: int, height: int, what: str, max_bytes: int) -> None:
    """Decode and keep a background image for this stream (png/jpeg, or raw rgb at the frame's size)."""
    fmt = frames.sniff(data) or ("rgb" if len(data) == width * height * 3 else "")
    if not fmt:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: background_image is neither png/jpeg nor raw rgb of "
                                              f"{width}x{height} ({width * height * 3} bytes); got {len(data)} bytes")
    img = frames.decode(data, fmt, width, height, what=f"{what} background_image", max_bytes=max_bytes)
    state["seg_bg"] = np.array(img)
    state.pop("seg_bg_sized", None)


def _background_for(state: dict, w: int, h: int) -> np.ndarray | None:
    bg = state.get("seg_bg")
    if bg is None:
        return None
    cached = state.get("seg_bg_sized")
    if cached is not None and cached.shape[:2] == (h, w):
        return cached
    sized = cv2.resize(bg, (w, h), interpolation=cv2.INTER_AREA)
    state["seg_bg_sized"] = sized
    return sized


def segment(solution, rgb: np.ndarray) -> np.ndarray:
    """Soft person mask (H, W) float32 in [0, 1]."""
    res = solution.process(rgb)
    m = res.segmentation_mask
    if m is None:
        return np.zeros(rgb.shape[:2], np.float32)
    return np.clip(m, 0.0, 1.0).astype(np.float32, copy=False)


def _mask_bytes(soft: np.ndarray, thr: float, alpha: bool, size: tuple[int, int]) -> bytes:
    """The 1-channel mask at `size` (w, h): the soft mask is resized first, then cut (binary) or scaled."""
    if size != (soft.shape[1], soft.shape[0]):
        soft = cv2.resize(soft, size, interpolation=cv2.INTER_AREA)
    if alpha:
        return (soft * 255.0 + 0.5).astype(np.uint8).tobytes()
    return ((soft >= thr).astype(np.uint8) * 255).tobytes()


def _composite(rgb: np.ndarray, soft: np.ndarray, meta, state: dict, what: str, output: str) -> tuple[np.ndarray, str]:
    """The composited frame (RGB, or RGBA for cutout) and the requested encoding."""
    h, w = soft.shape
    fmt = (meta.get("frame_format") or ("rgba" if output == "cutout" else "rgb")).lower()
    if output == "cutout":
        if fmt not in ("rgba", "png"):
            raise WorkerError("INVALID_ARGUMENT", f"{what}: output=cutout needs frame_format rgba or png, got {fmt!r}")
        return np.dstack([rgb, (soft * 255.0 + 0.5).astype(np.uint8)]), fmt
    if output == "blur":
        r = int(_float(meta, "blur_radius", 21, 1, 255, what))
        k = 2 * r + 1
        bg = cv2.GaussianBlur(rgb, (k, k), 0)
    else:
        bg = _background_for(state, w, h)
        if bg is None:
            color = parse_color(meta.get("background_color") or "#00FF00", what)
            bg = np.empty_like(rgb)
            bg[:] = color
    a = soft[..., None]
    return (rgb.astype(np.float32) * a + bg.astype(np.float32) * (1.0 - a) + 0.5).astype(np.uint8), fmt


def compose(rgb: np.ndarray, soft: np.ndarray, meta, state: dict, what: str,
            resp: pb.SegmentationResponse, max_bytes: int = 0) -> None:
    """Fill `resp`; with `max_bytes` the whole message stays within it: the composite (what a person
    sees) first, with a quarter of the room kept for the mask (or the mask's full size if smaller);
    then the mask, at the frame's size if what is left allows it (see fit.py)."""
    output = (meta.get("output") or "mask").lower()
    if output not in OUTPUTS:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: metadata output={output!r}; use one of {', '.join(OUTPUTS)}")
    thr = _float(meta, "threshold", 0.5, 0.0, 1.0, what)
    h, w = soft.shape
    resp.output = output
    resp.coverage = float((soft >= thr).mean())
    resp.format = "alpha" if output in ("alpha", "cutout") else "binary"
    # bytes left for mask + frame: the other fields (frame_* counted at their largest) and two field headers
    avail = max_bytes - resp.ByteSize() - 64 - 2 * fit.FIELD_OVERHEAD if max_bytes > 0 else 0
    if output not in ("mask", "alpha"):
        out, fmt = _composite(rgb, soft, meta, state, what, output)
        if max_bytes > 0:
            data, used, fw, fh, _ = fit.fit_frame(out, fmt, avail - min(w * h, avail // 4), what)
        else:
            (data, used), fw, fh = frames.encode(out, fmt), w, h
        resp.frame_data, resp.frame_format = data, used
        resp.frame_width, resp.frame_height = fw, fh
    mw, mh = (w, h) if max_bytes <= 0 else fit.mask_size(w, h, avail - len(resp.frame_data), what)
    resp.width, resp.height = mw, mh
    resp.mask = _mask_bytes(soft, thr, resp.format == "alpha", (mw, mh))
