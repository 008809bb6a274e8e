"""Frame decoding: every format, exact size checks, limits, and error messages naming the frame."""
import os

import cv2
import numpy as np
import pytest

from workers.context import WorkerError
from workers.vision import frames

ASSETS = os.path.join(os.path.dirname(__file__), "assets")


@pytest.fixture(scope="module")
def rgb():
    bgr = cv2.imread(os.path.join(ASSETS, "images", "grace_hopper.jpg"))
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[:480, :512])


def err(fn, *a, **k) -> WorkerError:
    with pytest.raises(WorkerError) as ei:
        fn(*a, **k)
    return ei.value


def test_raw_formats_round_trip(rgb):
    h, w = rgb.shape[:2]
    assert np.array_equal(frames.decode(rgb.tobytes(), "rgb", w, h), rgb)
    assert np.array_equal(frames.decode(memoryview(rgb.tobytes()), "raw", w, h), rgb)
    assert np.array_equal(frames.decode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).tobytes(), "bgr", w, h), rgb)
    assert np.array_equal(frames.decode(cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA).tobytes(), "rgba", w, h), rgb)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert np.array_equal(frames.decode(gray.tobytes(), "gray", w, h)[..., 0], gray)


def test_rgb_is_zero_copy(rgb):
    h, w = rgb.shape[:2]
    buf = bytearray(rgb.tobytes())
    out = frames.decode(memoryview(buf), "rgb", w, h)
    buf[0] = (buf[0] + 1) % 256
    assert out[0, 0, 0] == buf[0]


def test_i420(rgb):
    h, w = rgb.shape[:2]
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    out = frames.decode(yuv.tobytes(), "yuv420", w, h)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4


def test_encoded(rgb):
    for ext, fmt in ((".png", "png"), (".jpg", "jpeg")):
        ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        for f in (fmt, ""):  # explicit or sniffed
            out = frames.decode(buf.tobytes(), f)
            assert out.shape == rgb.shape
            assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4
        assert frames.encoded_size(buf.tobytes(), fmt) == (rgb.shape[1], rgb.shape[0])


def test_greyscale_png_becomes_rgb():
    data = open(os.path.join(ASSETS, "images", "basketball1.png"), "rb").read()
    out = frames.decode(data, "png")
    assert out.shape == (480, 640, 3)


def test_size_mismatch_names_frame_and_sizes():
    e = err(frames.decode, b"x" * 100, "rgb", 640, 480, what="frame 12")
    assert e.code == "INVALID_ARGUMENT"
    assert e.message == "frame 12 (rgb 640x480): expected 921600 bytes (640x480x3), got 100"


@pytest.mark.parametrize("w,h", [(0, 480), (640, 0), (-5, 10)])
def test_bad_dimensions(w, h):
    e = err(frames.decode, b"x" * 300, "rgb", w, h, what="frame 3")
    assert e.code == "INVALID_ARGUMENT" and "frame 3" in e.message and "positive" in e.message


def test_unknown_format_and_empty():
    e = err(frames.decode, b"x" * 12, "tiff", 2, 2, what="frame 1")
    assert e.code == "INVALID_ARGUMENT" and "unknown format 'tiff'" in e.message
    e = err(frames.decode, b"", "rgb", 2, 2, what="frame 1")
    assert "frame 1" in e.message and "empty" in e.message
    e = err(frames.decode, b"garbage-bytes", "", 0, 0, what="image")
    assert "neither jpeg nor png" in e.message


def test_corrupt_jpeg(rgb):
    ok, buf = cv2.imencode(".jpg", rgb)
    bad = buf.tobytes()[:20] + b"\x00" * 17
    e = err(frames.decode, bad, "jpeg", what="frame 7")
    assert e.code == "INVALID_ARGUMENT" and e.message.startswith("frame 7 (jpeg, 37 bytes)")
    e = err(frames.decode, b"\x89PNG not really", "jpeg", what="frame 8")
    assert "not a jpeg" in e.message


def test_limits():
    e = err(frames.decode, b"x" * 1000, "rgb", 10, 10, what="frame 2", max_bytes=999)
    assert "above the frame size limit of 999 bytes" in e.message
    e = err(frames.decode, b"x" * 12, "rgb", 20000, 20000, what="frame 2")
    assert "expected" in e.message or "limit" in e.message
    # a small PNG whose header claims 100000 x 100000 is refused before decoding
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    e = err(frames.decode, png + b"\x00" * 16, "png", what="frame 9")
    assert "100000x100000" in e.message and "limit" in e.message


def test_video_codecs_need_a_stream():
    # decoded per stream (frames.decode_in_stream, tests/test_vision_video_decoder.py), never as one image
    e = err(frames.decode, b"\x00\x00\x00\x01gxx", "h264", 640, 480, what="frame 1")
    assert e.code == "INVALID_ARGUMENT" and e.message.startswith("frame 1 (h264, 7 bytes)") and "stream" in e.message


def test_i420_odd_and_size():
    assert "even" in err(frames.decode, b"x" * 10, "yuv420", 3, 2).message
    assert "expected 6 bytes" in err(frames.decode, b"x" * 10, "yuv420", 2, 2).message
