"""A stream's H.264 output: libx264 through PyAV, zero latency, Annex B with SPS/PPS in-band.

Used by StreamAutoFlip's `output_format: h264`: every answered frame is one access unit that a
WebRTC-style decoder (or this service's own h264 input) decodes as it comes - one picture in, one
access unit out (tune zerolatency: no B-frames, no lookahead), the first one an IDR with its
parameter sets, an IDR again every `gop` frames and whenever the caller asks (`keyframe=True`, e.g.
after a frame that had to be sent otherwise). The encoder lives in the stream's state and is closed
with the stream (`close()`); a new size (another aspect ratio, a new input size) opens a new one,
which starts with an IDR. H.264 4:2:0 needs even sides: an odd last row/column is left out.
"""
from __future__ import annotations

import fractions

import cv2
import numpy as np

from workers.context import WorkerError

DEFAULT_CRF = 23
DEFAULT_GOP = 120
PRESET = "veryfast"


def even_size(w: int, h: int) -> tuple[int, int]:
    return w - w % 2, h - h % 2


class H264Encoder:
    def __init__(self, width: int, height: int, threads: int = 1, crf: int = DEFAULT_CRF, gop: int = DEFAULT_GOP):
        import av
        self.width, self.height = even_size(width, height)
        if self.width < 2 or self.height < 2:
            raise WorkerError("INVALID_ARGUMENT", f"h264 output needs a picture of at least 2x2 pixels; this one is "
                                                  f"{width}x{height}: ask for output_format rgb or jpeg")
        self._av = av
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = self.width, self.height, "yuv420p"
        ctx.time_base = fractions.Fraction(1, 1000)
        ctx.gop_size = gop
        ctx.options = {"tune": "zerolatency", "preset": PRESET, "crf": str(crf), "threads": str(max(1, threads))}
        self._ctx = ctx
        self.frames = 0
        self._pts = -1

    def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        del ctx            # x264 and its threads are freed with PyAV's last reference

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def encode(self, rgb: np.ndarray, pts_ms: int, keyframe: bool = False) -> tuple[bytes, bool]:
        """One RGB picture (the encoder's size, or one row/column more) -> (access unit, is it an IDR)."""
        if self._ctx is None:
            raise WorkerError("INTERNAL", "the stream's h264 encoder was already closed")
        img = np.ascontiguousarray(rgb[:self.height, :self.width])
        if img.shape[:2] != (self.height, self.width):
            raise WorkerError("INTERNAL", f"h264 encoder for {self.width}x{self.height} got {img.shape[1]}x{img.shape[0]}")
        frame = self._av.VideoFrame.from_ndarray(cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        self._pts = max(int(pts_ms), self._pts + 1)   # strictly increasing even when timestamps are not
        frame.pts = self._pts
        if keyframe:
            frame.pict_type = self._av.video.frame.PictureType.I
        packets = self._ctx.encode(frame)
        self.frames += 1
        if not packets:
            raise WorkerError("INTERNAL", "libx264 held a frame back in zero-latency mode (no access unit out)")
        return b"".join(bytes(p) for p in packets), any(p.is_keyframe for p in packets)
