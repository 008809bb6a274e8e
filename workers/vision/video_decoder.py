"""One compressed video stream -> RGB frames: a PyAV (FFmpeg) decoder owned by one stream.

`VideoDecoder(codec)` is created on a stream's first compressed frame and kept in the stream's state
(`ctx.stream_state`), so the worker base closes it when the stream ends, its client goes away, or
after the stream's last running frame. `decode(data, what)` takes one VideoFrame's bytes - an H.264 /
HEVC access unit in Annex B with parameter sets in-band, or one raw VP8 / VP9 frame - and returns an
RGB uint8 array (H, W, 3), or None when the frame holds no picture to show (parameter sets only: kept
and decoded with the next frame; a hidden VP8/VP9 frame). Every refusal is a
WorkerError("INVALID_ARGUMENT", "<what> (<codec>, N bytes): ...") and leaves the worker and other
streams untouched; a stream should end after one.

Checks, in order: the bytes are that codec's framing (video_bitstream.py); the first picture of the
stream is a keyframe with its parameter sets; every size the frame declares (SPS, VP8/VP9 frame
header) is within the image limits (16384 px per side, 50 Mpx) BEFORE FFmpeg decodes anything; then
FFmpeg's own verdict (errors, frames it had to conceal); then the decoded size again, before the
conversion to RGB. FFmpeg runs in low-delay mode (one access unit in, its picture out; no frame
threading, which would hold frames back) with `threads` slice threads.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from workers.context import WorkerError
from workers.vision import video_bitstream as vb
from workers.vision.image_header import MAX_PIXELS, MAX_SIDE

CODECS = vb.CODECS
NAMES = {"h264": "H.264", "hevc": "HEVC", "vp8": "VP8", "vp9": "VP9"}
KEYFRAME = {"h264": "an IDR access unit with its SPS and PPS", "hevc": "an IRAP access unit (IDR/CRA) with its "
            "VPS, SPS and PPS", "vp8": "a VP8 key frame", "vp9": "a VP9 key frame"}
NEEDED_SETS = {"h264": {"sps", "pps"}, "hevc": {"vps", "sps", "pps"}}
MAX_HELD_BYTES = 1 << 20


def within_limits(w: int, h: int) -> bool:
    return 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and w * h <= MAX_PIXELS


class VideoDecoder:
    """A stream's decoder. Not thread-safe: the frames of one stream arrive one at a time."""

    def __init__(self, codec: str, threads: int = 1):
        import av   # PyAV: imported with the first compressed stream, not at worker start
        self.codec = vb.normalise(codec)
        if self.codec not in CODECS:
            raise ValueError(f"no decoder for {codec!r}")
        self._av = av
        ctx = av.CodecContext.create(self.codec, "r")
        ctx.thread_type = "SLICE"
        ctx.thread_count = max(1, int(threads))
        ctx.flags |= av.codec.context.Flags.low_delay
        self._ctx = ctx
        self.frames_in = 0          # frames handed to decode()
        self.pictures = 0           # pictures returned
        self.size: Optional[tuple[int, int]] = None   # last decoded picture (width, height)
        self._sets: set = set()     # parameter sets seen so far (H.264 / HEVC)
        self._held = bytearray()    # NAL units of picture-less frames, sent with the next picture

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def close(self) -> None:
        """Free FFmpeg's context, its threads and picture buffers (idempotent)."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            try:
                ctx.flush_buffers()
            except Exception:   # a context that never opened has nothing to flush
                pass
            del ctx            # avcodec_free_context runs when PyAV drops its last reference

    def decode(self, data, what: str = "frame") -> Optional[np.ndarray]:
        if self._ctx is None:
            raise WorkerError("INTERNAL", f"{what}: the stream's {NAMES[self.codec]} decoder was already closed")
        buf = bytes(data)
        desc = f"{what} ({self.codec}, {len(buf)} bytes)"
        if not buf:
            raise WorkerError("INVALID_ARGUMENT", f"{desc}: no frame bytes were sent")
        self.frames_in += 1
        try:
            info = vb.inspect(self.codec, buf)
        except vb.BitstreamError as exc:
            raise WorkerError("INVALID_ARGUMENT", f"{desc}: {exc}") from None
        self._check_start(info, desc)
        for w, h in info.sizes:
            if not within_limits(w, h):
                raise WorkerError("INVALID_ARGUMENT", f"{desc}: the frame declares a {w}x{h} picture, "
                                                      f"above the limit of {MAX_SIDE} px per side and {MAX_PIXELS} "
                                                      f"pixels (nothing was decoded)")
        self._sets |= info.parameter_sets
        if not info.has_picture:
            # parameter sets / SEI alone: FFmpeg answers a packet without a picture with an error, so they
            # go in front of the next frame's access unit (bounded: a client cannot grow this)
            if len(self._held) + len(buf) > MAX_HELD_BYTES:
                raise WorkerError("INVALID_ARGUMENT", f"{desc}: more than {MAX_HELD_BYTES} bytes of frames without "
                                                      f"a picture in a row; send parameter sets with the frame "
                                                      f"they belong to")
            self._held += buf
            return None
        if self._held:
            buf, self._held = bytes(self._held) + buf, bytearray()
        try:
            pictures = self._ctx.decode(self._av.Packet(buf))
        except self._av.error.FFmpegError as exc:
            raise WorkerError("INVALID_ARGUMENT", f"{desc}: the {NAMES[self.codec]} data could not be decoded "
                                                  f"(corrupt or truncated): {_reason(exc)}") from None
        if not pictures:
            if info.has_picture and info.shown:
                # zero latency: a picture in is a picture out, unless the data is broken
                raise WorkerError("INVALID_ARGUMENT", f"{desc}: this {'keyframe' if info.keyframe else 'frame'} gave "
                                                      f"no picture: the {NAMES[self.codec]} data is corrupt, or the "
                                                      f"stream holds frames back (B-frames / frame reordering), which "
                                                      f"a zero-latency stream must not")
            return None
        frame = pictures[-1]      # one access unit gives one picture; keep the newest if a client packed more
        if frame.is_corrupt:
            raise WorkerError("INVALID_ARGUMENT", f"{desc}: the {NAMES[self.codec]} data is corrupt or truncated "
                                                  f"(the decoder had to conceal errors in this picture)")
        w, h = frame.width, frame.height
        if not within_limits(w, h):      # a second line: the size FFmpeg decoded, before any RGB is made
            raise WorkerError("INVALID_ARGUMENT", f"{desc}: the decoded picture is {w}x{h}, above the limit of "
                                                  f"{MAX_SIDE} px per side and {MAX_PIXELS} pixels")
        self.pictures += 1
        self.size = (w, h)
        return to_rgb(frame)

    def _check_start(self, info: vb.FrameInfo, desc: str) -> None:
        """A fresh decoder can only start at a keyframe that brings its parameter sets."""
        if self.pictures or not info.has_picture:
            return
        name = NAMES[self.codec]
        if not info.keyframe:
            raise WorkerError("INVALID_ARGUMENT", f"{desc}: the stream's first picture is not a keyframe; a "
                                                  f"{name} stream must start with {KEYFRAME[self.codec]} (ask the "
                                                  f"sender for a keyframe, e.g. a WebRTC PLI/FIR)")
        missing = NEEDED_SETS.get(self.codec, set()) - self._sets - info.parameter_sets
        if missing:
            raise WorkerError("INVALID_ARGUMENT", f"{desc}: the first keyframe comes without its "
                                                  f"{'/'.join(s.upper() for s in sorted(missing))}: send parameter "
                                                  f"sets in-band, before the keyframe in the same access unit or "
                                                  f"an earlier frame (as WebRTC and x264 do)")


def to_rgb(frame) -> np.ndarray:
    """An FFmpeg picture as a C-contiguous RGB uint8 array: OpenCV for 8-bit 4:2:0 (3x faster than swscale
    here), swscale for the rest (4:2:2, 4:4:4, 10-bit, ...)."""
    if frame.format.name in ("yuv420p", "yuvj420p") and not (frame.width % 2 or frame.height % 2):
        return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(";")[0].strip() or type(exc).__name__
