"""Frame decoding: raw rgb/bgr/rgba/gray/yuv420 (I420) and encoded jpeg/png bytes -> an RGB uint8 array.

Every check is exact and every error names the frame and the problem, e.g.
``frame 12 (rgb 640x480): expected 921600 bytes, got 100``. Raw frames are wrapped without a copy
where the layout allows it (rgb straight from shared memory); encoded images have their dimensions
read from their real header (image_header.py) *before* decoding, so a small file that claims a huge
size is refused cheaply, and one whose header cannot be read is refused, never decoded blind.
Compressed video (h264, hevc, vp8, vp9) needs the frames before it: `decode_in_stream` hands it to the
stream's own decoder (video_decoder.py, kept in the stream state); a single image in a video codec is
refused with INVALID_ARGUMENT.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from workers.context import WorkerError
from workers.vision.image_header import MAX_PIXELS, MAX_SIDE, HeaderError, image_size

# Default; the worker overrides it from its options (max_frame_bytes).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

RAW_CHANNELS = {"rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4, "gray": 1, "grey": 1}
ALIASES = {"raw": "rgb", "jpg": "jpeg", "i420": "yuv420", "yuv": "yuv420", "yuv420p": "yuv420",
           "grey": "gray", "l": "gray", "avc": "h264", "h.264": "h264", "h265": "hevc", "h.265": "hevc"}
ENCODED = ("jpeg", "png")
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1")
STREAM_CODECS = ("h264", "hevc", "vp8", "vp9")      # decoded per stream (video_decoder.py)
STREAM_DECODER = "video_decoder"                     # the stream state's key for its decoder


def label(kind: str, number: Optional[int] = None) -> str:
    """'frame 12' or 'image' – the start of every error message about one input."""
    return f"{kind} {number}" if number is not None else kind


def sniff(data) -> str:
    """'jpeg' / 'png' from magic bytes, '' if neither."""
    head = bytes(data[:8])
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head == b"\x89PNG\r\n\x1a\n":
        return "png"
    return ""


def normalise_format(fmt: str, data, width: int, height: int) -> str:
    f = (fmt or "").strip().lower()
    f = ALIASES.get(f, f)
    if not f:
        s = sniff(data) if data is not None and len(data) >= 8 else ""
        if s:
            return s
        return "rgb" if width > 0 and height > 0 else ""
    return f


def encoded_size(data, fmt: str) -> Optional[tuple[int, int]]:
    """(width, height) from a PNG IHDR or a JPEG SOF header wherever it sits, or None if unreadable."""
    try:
        return image_size(data, fmt)
    except HeaderError:
        return None


def decode(data, fmt: str, width: int = 0, height: int = 0, *, what: str = "frame",
           max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode one frame to a C-contiguous RGB uint8 array of shape (H, W, 3).

    ``data``: bytes / memoryview / uint8 array. ``what``: the frame's label for messages
    ("frame 12", "image", "background image").
    """
    if data is None or len(data) == 0:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: no image bytes were sent (the data field is empty)")
    n = len(data)
    f = normalise_format(fmt, data, width, height)
    desc = (f"{what} ({f}, {n} bytes)" if f in ENCODED or f in VIDEO_CODECS
            else f"{what} ({f or fmt or 'unknown format'} {width}x{height})")
    if n > max_bytes:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: {n} bytes is above the frame size limit of {max_bytes} bytes; "
                                              f"send a smaller frame or raise --max-frame-bytes")
    if f in VIDEO_CODECS:
        if f not in STREAM_CODECS:
            raise _unsupported_codec(desc, f)
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: a {f} frame only decodes with the frames before it: send "
                                              f"compressed video in a stream (StreamFaceDetection, ...: one decoder "
                                              f"per stream), or send this picture as jpeg or png (or raw rgb)")
    if f in ENCODED:
        return _decode_encoded(data, f, desc)
    if f == "yuv420":
        return _decode_i420(data, width, height, desc)
    if f not in RAW_CHANNELS:
        if not f:
            raise WorkerError("INVALID_ARGUMENT", f"{desc}: no format given and the bytes are neither jpeg nor png; "
                                                  f"set format (rgb, bgr, rgba, yuv420, jpeg, png) and width/height for raw frames")
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: unknown format {fmt!r}; use one of rgb, bgr, rgba, gray, yuv420, "
                                              f"jpeg, png (or h264, hevc, vp8, vp9 in a stream)")
    _check_dims(width, height, desc)
    ch = RAW_CHANNELS[f]
    expected = width * height * ch
    if n != expected:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: expected {expected} bytes ({width}x{height}x{ch}), got {n}")
    arr = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if ch == 1:
        return cv2.cvtColor(arr.reshape(height, width), cv2.COLOR_GRAY2RGB)
    arr = arr.reshape(height, width, ch)
    if f == "rgb":
        return arr
    if f == "bgr":
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if f == "rgba":
        return cv2.cvtColor(arr, cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)


def decode_in_stream(state: dict, data, fmt: str, width: int = 0, height: int = 0, *, what: str = "frame",
                     max_bytes: int = DEFAULT_MAX_BYTES, threads: int = 1) -> Optional[np.ndarray]:
    """decode() for one frame of a stream. Compressed video (h264, hevc, vp8, vp9) goes through the stream's
    own decoder, created on its first compressed frame and kept in `state` (closed with the stream); it
    returns None for a frame that holds no picture (parameter sets only). Other formats: decode()."""
    f = normalise_format(fmt, data, width, height)
    if f not in VIDEO_CODECS:
        return decode(data, fmt, width, height, what=what, max_bytes=max_bytes)
    n = 0 if data is None else len(data)
    desc = f"{what} ({f}, {n} bytes)"
    if n == 0:
        raise WorkerError("INVALID_ARGUMENT", f"{what} ({f}): no frame bytes were sent (the data field is empty)")
    if n > max_bytes:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: {n} bytes is above the frame size limit of {max_bytes} "
                                              f"bytes; send a smaller frame or raise --max-frame-bytes")
    if f not in STREAM_CODECS:
        raise _unsupported_codec(desc, f)
    from workers.vision.video_decoder import VideoDecoder
    dec = state.get(STREAM_DECODER)
    if dec is None:
        dec = state[STREAM_DECODER] = VideoDecoder(f, threads)
    elif dec.codec != f:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: this stream started as {dec.codec}; a stream carries one "
                                              f"video codec (open a new stream for {f})")
    return dec.decode(data, what)


def _unsupported_codec(desc: str, f: str) -> WorkerError:
    return WorkerError("INVALID_ARGUMENT", f"{desc}: {f} video is not decoded by this service; send "
                                           f"{', '.join(STREAM_CODECS)} in a stream, or decoded frames "
                                           f"(rgb, bgr, rgba, yuv420) or jpeg/png images")


def _check_dims(width: int, height: int, desc: str) -> None:
    if width <= 0 or height <= 0:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: width and height must be positive for raw frames")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: {width}x{height} is above the limit of {MAX_SIDE} px per side "
                                              f"and {MAX_PIXELS} pixels")


def _decode_i420(data, width: int, height: int, desc: str) -> np.ndarray:
    _check_dims(width, height, desc)
    if width % 2 or height % 2:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: yuv420 (I420) needs an even width and height")
    expected = width * height * 3 // 2
    if len(data) != expected:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: expected {expected} bytes for I420 ({width}x{height}x1.5), got {len(data)}")
    arr = np.frombuffer(data, dtype=np.uint8).reshape(height * 3 // 2, width)
    return cv2.cvtColor(arr, cv2.COLOR_YUV2RGB_I420)


def _decode_encoded(data, f: str, desc: str) -> np.ndarray:
    if sniff(data) != f:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: the bytes are not a {f} file (bad magic bytes)")
    try:
        w, h = image_size(data, f)
    except HeaderError as exc:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: the {f} data could not be decoded: {exc}; an image is only "
                                              f"decoded once its header gives its size") from None
    if w <= 0 or h <= 0:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: the {f} header declares an empty image ({w}x{h})")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: the {f} header declares {w}x{h}, above the limit of "
                                              f"{MAX_SIDE} px per side and {MAX_PIXELS} pixels")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:   # OpenCV's own header check (OPENCV_IO_MAX_IMAGE_PIXELS, set by the vision worker)
        img = None
    if img is None:
        raise WorkerError("INVALID_ARGUMENT", f"{desc}: the {f} data could not be decoded (corrupt or truncated)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode(rgb: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """Encode an RGB (or single-channel) array as 'rgb'/'bgr'/'rgba' raw bytes or 'png'/'jpeg'."""
    f = ALIASES.get((fmt or "rgb").lower(), (fmt or "rgb").lower())
    if rgb.ndim == 2:
        if f in ("png", "jpeg"):
            ok, buf = cv2.imencode("." + ("jpg" if f == "jpeg" else "png"), rgb)
            return buf.tobytes(), f
        return np.ascontiguousarray(rgb).tobytes(), "gray"
    if f == "rgb":
        return np.ascontiguousarray(rgb).tobytes(), "rgb"
    if f == "bgr":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).tobytes(), "bgr"
    if f == "rgba":
        if rgb.shape[2] == 4:
            return np.ascontiguousarray(rgb).tobytes(), "rgba"
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA).tobytes(), "rgba"
    if f in ("png", "jpeg"):
        conv = cv2.COLOR_RGBA2BGRA if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR
        if f == "jpeg" and rgb.shape[2] == 4:
            conv = cv2.COLOR_RGBA2BGR
        ok, buf = cv2.imencode("." + ("jpg" if f == "jpeg" else "png"), cv2.cvtColor(rgb, conv))
        if not ok:
            raise WorkerError("INTERNAL", f"could not encode the output frame as {f}")
        return buf.tobytes(), f
    raise WorkerError("INVALID_ARGUMENT", f"unknown output format {fmt!r}; use rgb, bgr, rgba, png or jpeg")
