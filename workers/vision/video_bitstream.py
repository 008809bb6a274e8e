"""What a compressed video frame says about itself, read before any decoder sees it.

One VideoFrame carries one access unit (H.264/HEVC: Annex B, start codes, parameter sets in-band as
WebRTC and x264's zero-latency mode send them) or one raw VP8/VP9 frame (no IVF container, as WebRTC
depacketises them). `inspect(codec, data)` returns a `FrameInfo`: whether the frame is a keyframe
(a point a fresh decoder can start from), whether it carries a picture at all, the parameter sets it
brings, and every picture size it declares (H.264/HEVC SPS, VP8 key frame header, VP9 frame header).
The decoder (video_decoder.py) checks those sizes against the image limits before decoding, so a few
bytes declaring a 20000x20000 picture never make FFmpeg allocate it. Malformed headers raise
`BitstreamError` with a sentence saying what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

CODECS = ("h264", "hevc", "vp8", "vp9")
ALIASES = {"avc": "h264", "h.264": "h264", "h265": "hevc", "h.265": "hevc", "vp08": "vp8", "vp09": "vp9"}
MAX_NAL_UNITS = 4096          # per access unit (a 4K frame in 1-row slices has 135)
MAX_PARAMETER_SET_BYTES = 4096  # an SPS is tens of bytes; only this much of one is read


class BitstreamError(ValueError):
    """The frame's bytes are not what its format says (message: what is wrong, for a person)."""


@dataclass
class FrameInfo:
    keyframe: bool = False              # a fresh decoder can start here (H.264 IDR, HEVC IRAP, VP8/VP9 key frame)
    has_picture: bool = True            # False: parameter sets / SEI only (H.264/HEVC), nothing to show
    shown: bool = True                  # a zero-latency decoder outputs a picture for it (not a hidden VP8/VP9
                                        # frame, not an HEVC RASL picture that a decoder starting at a CRA skips)
    parameter_sets: set = field(default_factory=set)   # "sps", "pps", "vps" present in this access unit
    sizes: list = field(default_factory=list)           # [(width, height)] declared (coded size, before cropping)
    nal_types: list = field(default_factory=list)       # H.264/HEVC NAL unit types, in order


def normalise(codec: str) -> str:
    c = (codec or "").strip().lower()
    return ALIASES.get(c, c)


def inspect(codec: str, data: bytes) -> FrameInfo:
    codec = normalise(codec)
    if codec == "h264":
        return _h264(data)
    if codec == "hevc":
        return _hevc(data)
    if codec == "vp8":
        return _vp8(data)
    if codec == "vp9":
        return _vp9(data)
    raise BitstreamError(f"unknown video codec {codec!r}")


# ------------------------------------------------------------------------------------------ Annex B
def nal_units(data: bytes, codec: str) -> list[memoryview]:
    """The NAL units of an Annex B access unit (start code 00 00 01, optionally after zero bytes)."""
    i = 0
    while i < len(data) and data[i] == 0:
        i += 1
    if i < 2 or i >= len(data) or data[i] != 1:
        raise BitstreamError(f"not an Annex B {codec} access unit: it does not begin with a start code "
                             f"(00 00 00 01); length-prefixed NAL units (AVCC/HVCC, as in MP4) are not accepted")
    starts = []
    pos = i + 1
    mv = memoryview(data)
    while True:
        nxt = data.find(b"\x00\x00\x01", pos)
        end = len(data) if nxt < 0 else nxt
        # trailing zero bytes belong to the next start code (zero_byte) or are trailing padding
        stop = end
        while stop > pos and data[stop - 1] == 0:
            stop -= 1
        if stop > pos:
            starts.append(mv[pos:stop])
            if len(starts) > MAX_NAL_UNITS:
                raise BitstreamError(f"more than {MAX_NAL_UNITS} NAL units in one frame; send one access unit "
                                     f"per VideoFrame")
        if nxt < 0:
            return starts
        pos = nxt + 3


def _rbsp(nal: memoryview, header_bytes: int) -> bytes:
    """The payload without its emulation-prevention bytes (00 00 03 -> 00 00), at most a few KB."""
    return bytes(nal[header_bytes:header_bytes + MAX_PARAMETER_SET_BYTES]).replace(b"\x00\x00\x03", b"\x00\x00")


class _Bits:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what
        self.n = len(data) * 8

    def u(self, k: int) -> int:
        if self.pos + k > self.n:
            raise BitstreamError(f"the {self.what} is truncated (needs more than its {len(self.data)} bytes)")
        v = 0
        for _ in range(k):
            v = (v << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def skip(self, k: int) -> None:
        if self.pos + k > self.n:
            raise BitstreamError(f"the {self.what} is truncated (needs more than its {len(self.data)} bytes)")
        self.pos += k

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise BitstreamError(f"the {self.what} has an invalid Exp-Golomb code (more than 31 leading zeros)")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


# ---------------------------------------------------------------------------------------------- H.264
H264_HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)


def h264_sps_size(rbsp: bytes) -> tuple[int, int, int, int]:
    """(coded width, coded height, cropped width, cropped height) from an H.264 SPS payload (ITU-T H.264 7.3.2.1.1)."""
    b = _Bits(rbsp, "H.264 SPS")
    profile = b.u(8)
    b.skip(16)             # constraint flags, level_idc
    b.ue()                 # seq_parameter_set_id
    chroma = 1
    separate = 0
    if profile in H264_HIGH_PROFILES:
        chroma = b.ue()
        if chroma > 3:
            raise BitstreamError(f"the H.264 SPS has chroma_format_idc {chroma} (0-3)")
        if chroma == 3:
            separate = b.u(1)
        b.ue()
        b.ue()             # bit depths
        b.skip(1)          # qpprime_y_zero_transform_bypass_flag
        if b.u(1):         # seq_scaling_matrix_present_flag
            for i in range(12 if chroma == 3 else 8):
                if b.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + b.se() + 256) % 256
                        last = nxt or last
    b.ue()                 # log2_max_frame_num_minus4
    poc = b.ue()
    if poc == 0:
        b.ue()
    elif poc == 1:
        b.skip(1)
        b.se()
        b.se()
        n = b.ue()
        if n > 255:
            raise BitstreamError(f"the H.264 SPS declares {n} reference frames in its POC cycle (at most 255)")
        for _ in range(n):
            b.se()
    elif poc != 2:
        raise BitstreamError(f"the H.264 SPS has pic_order_cnt_type {poc} (0-2)")
    b.ue()                 # max_num_ref_frames
    b.skip(1)              # gaps_in_frame_num_value_allowed_flag
    w_mbs = b.ue() + 1
    h_units = b.ue() + 1
    frame_mbs_only = b.u(1)
    if not frame_mbs_only:
        b.skip(1)
    b.skip(1)              # direct_8x8_inference_flag
    width, height = w_mbs * 16, h_units * 16 * (2 - frame_mbs_only)
    cw, ch = width, height
    if b.u(1):             # frame_cropping_flag
        left, right, top, bottom = b.ue(), b.ue(), b.ue(), b.ue()
        if chroma == 0 or separate:
            ux, uy = 1, 2 - frame_mbs_only
        else:
            ux, uy = (1 if chroma == 3 else 2), (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        cw, ch = width - ux * (left + right), height - uy * (top + bottom)
        if cw <= 0 or ch <= 0:
            raise BitstreamError(f"the H.264 SPS crops its {width}x{height} picture to nothing")
    return width, height, cw, ch


def _h264(data: bytes) -> FrameInfo:
    info = FrameInfo(has_picture=False)
    for nal in nal_units(data, "h264"):
        if nal[0] & 0x80:
            raise BitstreamError("an H.264 NAL unit has its forbidden_zero_bit set (not H.264 data?)")
        t = nal[0] & 0x1F
        info.nal_types.append(t)
        if 1 <= t <= 5:
            info.has_picture = True
            if t == 5:
                info.keyframe = True
        elif t == 7:
            info.parameter_sets.add("sps")
            w, h, _, _ = h264_sps_size(_rbsp(nal, 1))
            info.sizes.append((w, h))
        elif t == 8:
            info.parameter_sets.add("pps")
    return info


# ----------------------------------------------------------------------------------------------- HEVC
def hevc_sps_size(rbsp: bytes) -> tuple[int, int]:
    """(coded width, coded height) from an HEVC SPS payload (ITU-T H.265 7.3.2.2)."""
    b = _Bits(rbsp, "HEVC SPS")
    b.skip(4)                                # sps_video_parameter_set_id
    sub_layers = b.u(3)                      # sps_max_sub_layers_minus1
    b.skip(1)
    b.skip(96)                               # general profile_tier_level
    present = [(b.u(1), b.u(1)) for _ in range(sub_layers)]
    if sub_layers > 0:
        b.skip(2 * (8 - sub_layers))
    for profile, level in present:
        b.skip(88 * profile + 8 * level)
    b.ue()                                   # sps_seq_parameter_set_id
    chroma = b.ue()
    if chroma > 3:
        raise BitstreamError(f"the HEVC SPS has chroma_format_idc {chroma} (0-3)")
    if chroma == 3:
        b.skip(1)
    w, h = b.ue(), b.ue()
    if w <= 0 or h <= 0:
        raise BitstreamError(f"the HEVC SPS declares an empty picture ({w}x{h})")
    return w, h


def _hevc(data: bytes) -> FrameInfo:
    info = FrameInfo(has_picture=False)
    for nal in nal_units(data, "hevc"):
        if len(nal) < 2:
            raise BitstreamError("an HEVC NAL unit is shorter than its 2-byte header")
        if nal[0] & 0x80:
            raise BitstreamError("an HEVC NAL unit has its forbidden_zero_bit set (not HEVC data?)")
        t = (nal[0] >> 1) & 0x3F
        info.nal_types.append(t)
        if t <= 31:
            info.has_picture = True
            if 16 <= t <= 23:
                info.keyframe = True
            if t in (8, 9):   # RASL_N / RASL_R
                info.shown = False
        elif t == 32:
            info.parameter_sets.add("vps")
        elif t == 33:
            info.parameter_sets.add("sps")
            info.sizes.append(hevc_sps_size(_rbsp(nal, 2)))
        elif t == 34:
            info.parameter_sets.add("pps")
    return info


# ------------------------------------------------------------------------------------------------ VP8
def _vp8(data: bytes) -> FrameInfo:
    if len(data) < 3:
        raise BitstreamError(f"a VP8 frame has a 3-byte frame tag; got {len(data)} bytes")
    info = FrameInfo(keyframe=not (data[0] & 1), shown=bool(data[0] & 0x10))
    if info.keyframe:     # RFC 6386 9.1: start code 9d 01 2a, then 14-bit width and height
        if len(data) < 10 or bytes(data[3:6]) != b"\x9d\x01\x2a":
            raise BitstreamError("a VP8 key frame lacks its start code (9d 01 2a): not a raw VP8 frame "
                                 "(an IVF or WebM container is not accepted)")
        w = (data[6] | data[7] << 8) & 0x3FFF
        h = (data[8] | data[9] << 8) & 0x3FFF
        info.sizes.append((w, h))
    return info


# ------------------------------------------------------------------------------------------------ VP9
def _vp9_frames(data: bytes) -> list[memoryview]:
    """The frames of a VP9 superframe (its index is at the end), or the one frame."""
    mv = memoryview(data)
    last = data[-1]
    if last & 0xE0 == 0xC0:
        size_bytes, count = ((last >> 3) & 3) + 1, (last & 7) + 1
        index = 2 + size_bytes * count
        if len(data) >= index and data[-index] == last:
            out, pos = [], 0
            for k in range(count):
                off = len(data) - index + 1 + k * size_bytes
                n = int.from_bytes(bytes(data[off:off + size_bytes]), "little")
                if n == 0 or pos + n > len(data) - index:
                    raise BitstreamError("the VP9 superframe index gives frame sizes past its data")
                out.append(mv[pos:pos + n])
                pos += n
            return out
    return [mv]


def _vp9_size(b: _Bits) -> tuple[int, int]:
    return b.u(16) + 1, b.u(16) + 1


def _vp9_color(b: _Bits, profile: int) -> None:
    if profile >= 2:
        b.skip(1)
    if b.u(3) != 7:                          # color_space != CS_RGB
        b.skip(1)
        if profile in (1, 3):
            b.skip(3)
    elif profile in (1, 3):
        b.skip(1)


def _vp9_header(frame: memoryview, info: FrameInfo, first: bool) -> None:
    """VP9 bitstream spec 6.2 uncompressed_header(), up to the frame size."""
    b = _Bits(bytes(frame[:64]), "VP9 frame header")
    if b.u(2) != 2:
        raise BitstreamError("a VP9 frame does not begin with its frame marker (binary 10): not a raw VP9 frame "
                             "(an IVF or WebM container is not accepted)")
    profile = b.u(1) | b.u(1) << 1
    if profile == 3:
        b.skip(1)
    if b.u(1):                               # show_existing_frame: shows a decoded frame again
        info.shown = True
        return
    key = b.u(1) == 0
    show = b.u(1)
    error_res = b.u(1)
    info.shown = info.shown or bool(show)    # a superframe shows its last frame, usually
    sync = b"\x49\x83\x42"
    if key:
        if first:
            info.keyframe = True
        if b.u(24) != int.from_bytes(sync, "big"):
            raise BitstreamError("a VP9 key frame lacks its sync code (49 83 42)")
        _vp9_color(b, profile)
        info.sizes.append(_vp9_size(b))
        return
    intra_only = b.u(1) if not show else 0
    if not error_res:
        b.skip(2)                            # reset_frame_context
    if intra_only:
        if b.u(24) != int.from_bytes(sync, "big"):
            raise BitstreamError("a VP9 intra-only frame lacks its sync code (49 83 42)")
        if profile > 0:
            _vp9_color(b, profile)
        b.skip(8)                            # refresh_frame_flags
        info.sizes.append(_vp9_size(b))
        return
    b.skip(8 + 3 * 4)                        # refresh_frame_flags, ref_frame_idx + sign bias x3
    for _ in range(3):
        if b.u(1):                           # found_ref: the size of a frame already decoded (and checked)
            return
    info.sizes.append(_vp9_size(b))


def _vp9(data: bytes) -> FrameInfo:
    if len(data) < 1:
        raise BitstreamError("a VP9 frame cannot be empty")
    info = FrameInfo(shown=False)
    for k, frame in enumerate(_vp9_frames(data)):
        _vp9_header(frame, info, k == 0)
    return info


def declared_size(info: FrameInfo) -> Optional[tuple[int, int]]:
    """The largest size declared in this frame (by pixel count), or None."""
    return max(info.sizes, key=lambda s: s[0] * s[1]) if info.sizes else None
