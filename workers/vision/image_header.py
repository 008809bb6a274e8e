"""Image dimensions read from the file's own header, wherever it sits, before anything is decoded.

JPEG: the marker segments are walked from SOI by their declared lengths, as libjpeg reads them
(APPn / COM / DQT / DHT ... of any size, fill bytes and stray bytes between segments skipped), up to
the first SOFn: the frame header the decoder will use. No SOF before SOS / EOI / the end of the data,
a segment running past the end, or more than MAX_JPEG_SEGMENTS segments before the SOF raise
HeaderError: such a file is refused, never decoded blind.
PNG: IHDR must be the first chunk (libpng refuses anything else).
No cv2 here: the vision worker reads MAX_PIXELS before OpenCV is imported (OPENCV_IO_MAX_IMAGE_PIXELS).
"""
from __future__ import annotations

import struct

MAX_SIDE = 16384            # px per side of any image or frame
MAX_PIXELS = 50_000_000     # px per image or frame
MAX_JPEG_SEGMENTS = 4096    # marker segments before the SOF (real files: under 100, ICC chunks included)

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}    # C4 = DHT, C8 = JPG, CC = DAC
_PARAMLESS = frozenset(range(0xD0, 0xD8)) | {0x01}          # RSTn, TEM: no length field
_CHUNK = 65536


class HeaderError(ValueError):
    """The header cannot be read; the message says why (for a person)."""


def image_size(data, fmt: str) -> tuple[int, int]:
    """(width, height) declared by a 'jpeg' or 'png' file's header; HeaderError if unreadable."""
    mv = memoryview(data)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    if fmt == "png":
        return png_size(mv)
    if fmt == "jpeg":
        return jpeg_size(mv)
    raise HeaderError(f"no header reader for {fmt!r} images")


def png_size(mv: memoryview) -> tuple[int, int]:
    if len(mv) < 24 or bytes(mv[:8]) != b"\x89PNG\r\n\x1a\n":
        raise HeaderError(f"{len(mv)} bytes are too short for a PNG signature and IHDR chunk")
    length = struct.unpack_from(">I", mv, 8)[0]
    if bytes(mv[12:16]) != b"IHDR" or length != 13:
        raise HeaderError("the first PNG chunk is not a 13-byte IHDR (the image header)")
    w, h = struct.unpack_from(">II", mv, 16)
    return w, h


def _next_ff(mv: memoryview, i: int) -> int:
    """Index of the next 0xFF byte at or after i, or -1 (stray bytes between segments are skipped)."""
    n = len(mv)
    while i < n:
        k = bytes(mv[i:i + _CHUNK]).find(b"\xff")
        if k >= 0:
            return i + k
        i += _CHUNK
    return -1


def jpeg_size(mv: memoryview) -> tuple[int, int]:
    n = len(mv)
    if n < 4 or mv[0] != 0xFF or mv[1] != 0xD8:
        raise HeaderError("the data does not start with a JPEG start-of-image marker")
    i, segments = 2, 0
    while True:
        i = _next_ff(mv, i)
        if i < 0:
            raise HeaderError("no frame header (SOF marker) before the end of the data")
        at = i
        while i < n and mv[i] == 0xFF:      # fill bytes
            i += 1
        if i >= n:
            raise HeaderError("no frame header (SOF marker) before the end of the data")
        marker = mv[i]
        i += 1
        if marker == 0x00 or marker in _PARAMLESS:   # 0xFF00 is stuffed data, not a marker
            continue
        if marker == 0xD8:
            raise HeaderError(f"a second start-of-image marker at byte {at}, before any frame header (SOF)")
        if marker in (0xD9, 0xDA):
            what = "end of image" if marker == 0xD9 else "scan data (SOS)"
            raise HeaderError(f"{what} at byte {at} before any frame header (SOF)")
        if i + 2 > n:
            raise HeaderError(f"marker 0xFF{marker:02X} at byte {at} is cut off before its length")
        length = (mv[i] << 8) | mv[i + 1]
        if length < 2 or i + length > n:
            raise HeaderError(f"marker 0xFF{marker:02X} at byte {at} declares {length} bytes, "
                              f"{'too few' if length < 2 else 'past the end of the data'}")
        if marker in _SOF:
            if length < 8:
                raise HeaderError(f"the frame header (SOF) at byte {at} is {length} bytes, too short")
            h = (mv[i + 3] << 8) | mv[i + 4]
            w = (mv[i + 5] << 8) | mv[i + 6]
            return w, h
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise HeaderError(f"more than {MAX_JPEG_SEGMENTS} marker segments before the frame header (SOF)")
        i += length
