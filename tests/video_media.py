"""Real frames and their compressed forms for the video tests and the vision benchmark.

The frames come from tests/assets (tests/assets/ATTRIBUTION.md): carphone.mp4 (H.264 176x144, a face in
every frame) decoded with PyAV, and the 21 gesture PNGs (320x240, a face and a hand). `encode` compresses
them the way a WebRTC sender does, one packet per frame: libx264 in zero-latency mode (Annex B access
units, SPS/PPS in-band before every IDR), libvpx VP8 / VP9 in real-time mode (raw frames, no IVF),
libx265 zero-latency for HEVC.
"""
from __future__ import annotations

import fractions
import os
from functools import lru_cache

import cv2
import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
ENCODERS = {"h264": "libx264", "vp8": "libvpx", "vp9": "libvpx-vp9", "hevc": "libx265"}


@lru_cache(maxsize=None)
def _carphone() -> tuple:
    import av
    with av.open(os.path.join(ASSETS, "video", "carphone.mp4")) as c:
        return tuple(np.ascontiguousarray(f.to_ndarray(format="rgb24")) for f in c.decode(video=0))


def carphone(n: int = 120) -> list:
    """The first n of carphone's 120 frames as RGB (144, 176, 3) arrays."""
    return list(_carphone()[:n])


def gestures(size: tuple[int, int] | None = None) -> list:
    """The 21 gesture frames as RGB arrays (320x240, or resized to `size` = (width, height))."""
    out = []
    for i in range(21):
        bgr = cv2.imread(os.path.join(ASSETS, "video", "gestures_part1", f"frame_{i:02d}.png"))
        if size is not None:
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        out.append(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return out


def encoder(codec: str, width: int, height: int, quality: str = "high", gop: int = 250):
    import av
    ctx = av.CodecContext.create(ENCODERS[codec], "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.gop_size = gop
    if codec == "h264":
        ctx.options = {"tune": "zerolatency", "preset": "veryfast", "crf": "18" if quality == "high" else "28"}
    elif codec == "hevc":
        ctx.options = {"tune": "zerolatency", "preset": "ultrafast", "crf": "20" if quality == "high" else "30",
                       "x265-params": "log-level=error"}
    else:
        ctx.bit_rate = (4 if quality == "high" else 1) * 1_000_000
        ctx.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}
    return ctx


def encode(codec: str, rgbs: list, quality: str = "high", gop: int = 250) -> list[bytes]:
    """One compressed packet per frame (the first a keyframe), as a WebRTC depacketiser delivers them."""
    import av
    h, w = rgbs[0].shape[:2]
    ctx = encoder(codec, w, h, quality, gop)
    out = []
    for i, rgb in enumerate(rgbs):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets = ctx.encode(frame)
        assert len(packets) == 1, f"{codec}: {len(packets)} packets for frame {i} (expected one, zero latency)"
        out.append(bytes(packets[0]))
    assert not ctx.encode(None), f"{codec} held frames back"
    return out


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()
