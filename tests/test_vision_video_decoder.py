"""Unit tests of compressed video in the vision worker, on real frames encoded here with PyAV.

video_bitstream.py (keyframes, parameter sets, declared sizes), video_decoder.py (one decoder per stream:
pictures close to the originals, every refusal INVALID_ARGUMENT naming the frame, sizes bounded before
FFmpeg decodes, nothing left after close), frames.decode_in_stream / the handlers (one decoder in the
stream's state, unary calls refused), and video_encoder.py through StreamAutoFlip's h264 output.
"""
from __future__ import annotations

import psutil
import pytest

import numpy as np

from protos import ml_inference_pb2 as pb
from tests import video_media as vm
from workers.context import WorkerError, make_test_context
from workers.vision import frames, video_bitstream as vb, video_decoder
from workers.vision.video_decoder import VideoDecoder

CODECS = ("h264", "vp8", "vp9", "hevc")
SVC = "ml.MediapipeService/"


@pytest.fixture(scope="module")
def clips() -> dict:
    rgbs = vm.carphone(12)
    return {"rgb": rgbs, **{c: vm.encode(c, rgbs) for c in CODECS}}


def refused(fn, *args, **kw) -> str:
    with pytest.raises(WorkerError) as ei:
        fn(*args, **kw)
    assert ei.value.code == "INVALID_ARGUMENT", ei.value.message
    return ei.value.message


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------------------------------- bitstream
@pytest.mark.parametrize("codec", CODECS)
def test_bitstream_keyframes_and_sizes(clips, codec):
    first = vb.inspect(codec, clips[codec][0])
    assert first.keyframe and first.has_picture and first.sizes == [(176, 144)]
    assert first.parameter_sets == {"h264": {"sps", "pps"}, "hevc": {"vps", "sps", "pps"}}.get(codec, set())
    for pkt in clips[codec][1:]:
        later = vb.inspect(codec, pkt)
        assert not later.keyframe and later.has_picture and not later.parameter_sets


def test_h264_sps_size_with_cropping():
    rgbs = [np.zeros((102, 178, 3), np.uint8) + 90]   # not multiples of 16: the SPS crops 192x112
    (au,) = vm.encode("h264", rgbs)
    sps = next(n for n in vb.nal_units(au, "h264") if n[0] & 0x1F == 7)
    assert vb.h264_sps_size(vb._rbsp(sps, 1)) == (192, 112, 178, 102)
    assert vb.inspect("h264", au).sizes == [(192, 112)]
    assert VideoDecoder("h264").decode(au).shape == (102, 178, 3)


def test_vp9_superframe(clips):
    """Two frames in one packet with the superframe index at the end (VP9 spec annex B), as SVC senders do."""
    a, b = clips["vp9"][0], clips["vp9"][1]
    marker = 0b11000000 | (4 - 1) << 3 | (2 - 1)          # 4 bytes per size, 2 frames
    index = bytes([marker]) + len(a).to_bytes(4, "little") + len(b).to_bytes(4, "little") + bytes([marker])
    info = vb.inspect("vp9", a + b + index)
    assert info.keyframe and info.shown and info.sizes == [(176, 144)]
    assert VideoDecoder("vp9").decode(a + b + index, "frame 0").shape == (144, 176, 3)
    broken = a + b + bytes([marker]) + (len(a) + 9).to_bytes(4, "little") + len(b).to_bytes(4, "little") + \
        bytes([marker])
    assert "superframe index gives frame sizes past its data" in refused(VideoDecoder("vp9").decode, broken, "frame 0")


def test_annexb_framing_is_required():
    with pytest.raises(vb.BitstreamError, match="length-prefixed"):
        vb.nal_units(b"\x00\x00\x00\x1e\x67\x42", "h264")
    nals = vb.nal_units(b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00", "h264")
    assert [bytes(n) for n in nals] == [b"\x67\xaa", b"\x68\xbb"]


# ------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("codec", CODECS)
def test_decodes_every_frame_close_to_the_original(clips, codec):
    dec = VideoDecoder(codec)
    try:
        for n, (pkt, rgb) in enumerate(zip(clips[codec], clips["rgb"])):
            out = dec.decode(pkt, f"frame {n}")
            assert out.shape == rgb.shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
            assert mae(out, rgb) < 6, f"{codec} frame {n}: mean error {mae(out, rgb):.1f}"
        assert dec.pictures == dec.frames_in == len(clips[codec]) and dec.size == (176, 144)
    finally:
        dec.close()
    assert dec.closed
    dec.close()   # idempotent
    with pytest.raises(WorkerError) as ei:
        dec.decode(clips[codec][0], "frame 99")
    assert ei.value.code == "INTERNAL" and "already closed" in ei.value.message


@pytest.mark.parametrize("codec", CODECS)
def test_first_frame_must_be_a_keyframe(clips, codec):
    pkt = clips[codec][3]
    msg = refused(VideoDecoder(codec).decode, pkt, "frame 3")
    assert msg.startswith(f"frame 3 ({codec}, {len(pkt)} bytes): the stream's first picture is not a keyframe")
    assert "ask the sender for a keyframe" in msg


@pytest.mark.parametrize("codec,needle", [("h264", "does not begin with a start code"),
                                          ("hevc", "does not begin with a start code"),
                                          ("vp8", "not a keyframe"), ("vp9", "frame marker")])
def test_garbage_first_frame(codec, needle):
    garbage = bytes(range(97, 123)) * 3      # 'abc...z' x 3: no start code, VP8 inter flag, VP9 marker 01
    msg = refused(VideoDecoder(codec).decode, garbage, "frame 0")
    assert msg.startswith(f"frame 0 ({codec}, 78 bytes): ") and needle in msg


@pytest.mark.parametrize("codec", CODECS)
def test_corrupt_frame_mid_stream(clips, codec):
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = (b"\x00\x00\x00\x01\x41" + noise) if codec == "h264" else (b"\x00\x00\x00\x01\x02\x01" + noise) \
        if codec == "hevc" else bytes([clips[codec][1][0]]) + noise
    dec = VideoDecoder(codec)
    for n in range(3):
        dec.decode(clips[codec][n], f"frame {n}")
    msg = refused(dec.decode, bad, "frame 3")
    assert msg.startswith(f"frame 3 ({codec}, {len(bad)} bytes): ") and "corrupt" in msg
    dec.close()


def test_truncated_h264_frame_is_corrupt(clips):
    dec = VideoDecoder("h264")
    dec.decode(clips["h264"][0], "frame 0")
    cut = clips["h264"][1][: len(clips["h264"][1]) // 2]
    msg = refused(dec.decode, cut, "frame 1")
    assert msg.startswith(f"frame 1 (h264, {len(cut)} bytes): ") and "corrupt or truncated" in msg


def test_keyframe_without_parameter_sets(clips):
    au = clips["h264"][0]
    idr_only = b"".join(b"\x00\x00\x00\x01" + bytes(n) for n in vb.nal_units(au, "h264") if n[0] & 0x1F == 5)
    msg = refused(VideoDecoder("h264").decode, idr_only, "frame 0")
    assert "the first keyframe comes without its PPS/SPS" in msg and "in-band" in msg


def test_parameter_sets_alone_give_no_picture_then_the_idr_does(clips):
    nals = vb.nal_units(clips["h264"][0], "h264")
    sets = b"".join(b"\x00\x00\x00\x01" + bytes(n) for n in nals if n[0] & 0x1F in (7, 8))
    rest = b"".join(b"\x00\x00\x00\x01" + bytes(n) for n in nals if n[0] & 0x1F not in (7, 8))
    dec = VideoDecoder("h264")
    assert dec.decode(sets, "frame 0") is None
    assert dec.decode(rest, "frame 1").shape == (144, 176, 3)
    assert dec.decode(clips["h264"][1], "frame 2") is not None


# ------------------------------------------------------------------------- sizes, before decoding
def _bits_writer():
    bits: list[int] = []

    def u(n, v):
        bits.extend((v >> (n - 1 - i)) & 1 for i in range(n))

    def ue(v):
        v += 1
        n = v.bit_length()
        u(n - 1, 0)
        u(n, v)

    def done() -> bytes:
        b = bits + [1] + [0] * ((8 - (len(bits) + 1) % 8) % 8)     # rbsp trailing bits
        return bytes(int("".join(map(str, b[i:i + 8])), 2) for i in range(0, len(b), 8))
    return u, ue, done


def baseline_sps(width_mbs: int, height_mbs: int) -> bytes:
    u, ue, done = _bits_writer()
    u(8, 66), u(8, 0), u(8, 62), ue(0)          # profile baseline, level 6.2, sps id 0
    ue(0), ue(2)                                # log2_max_frame_num_minus4, pic_order_cnt_type 2
    ue(1), u(1, 0)                              # max_num_ref_frames, gaps
    ue(width_mbs - 1), ue(height_mbs - 1)
    u(1, 1), u(1, 1), u(1, 0), u(1, 0)          # frame_mbs_only, direct_8x8, no cropping, no VUI
    return b"\x00\x00\x00\x01\x67" + done().replace(b"\x00\x00", b"\x00\x00\x03")


def test_forged_sps_size_refused_before_ffmpeg_decodes(clips, monkeypatch):
    au = clips["h264"][0]
    rest = b"".join(b"\x00\x00\x00\x01" + bytes(n) for n in vb.nal_units(au, "h264") if n[0] & 0x1F != 7)
    bomb = baseline_sps(1250, 1250) + rest       # 20000x20000 declared in a 7 KB access unit
    assert vb.inspect("h264", bomb).sizes == [(20000, 20000)]
    dec = VideoDecoder("h264")
    monkeypatch.setattr(dec, "_ctx", _NoDecode())
    msg = refused(dec.decode, bomb, "frame 0")
    assert msg == (f"frame 0 (h264, {len(bomb)} bytes): the frame declares a 20000x20000 picture, above the limit "
                   f"of 16384 px per side and 50000000 pixels (nothing was decoded)")
    big = baseline_sps(500, 500)                  # 8000x8000: 64 Mpx, every side within 16384
    assert "8000x8000" in refused(VideoDecoder("h264").decode, big + rest, "frame 0")


class _NoDecode:
    def decode(self, *a):
        pytest.fail("FFmpeg was handed a frame whose declared size is above the limits")


def _set_bits(data: bytes, pos: int, n: int, value: int) -> bytes:
    b = bytearray(data)
    for i in range(n):
        bit = (value >> (n - 1 - i)) & 1
        byte, off = divmod(pos + i, 8)
        b[byte] = (b[byte] & ~(0x80 >> off)) | (bit << (7 - off))
    return bytes(b)


def test_forged_vp8_and_vp9_sizes_refused(clips):
    vp8 = bytearray(clips["vp8"][0])
    vp8[6:10] = (16383).to_bytes(2, "little") + (16383).to_bytes(2, "little")   # 268 Mpx
    assert "16383x16383" in refused(VideoDecoder("vp8").decode, bytes(vp8), "frame 0")
    # VP9 profile 0 key frame: 8 bits of flags, 24 of sync code, 4 of colour, then width-1 / height-1
    vp9 = _set_bits(_set_bits(clips["vp9"][0], 36, 16, 19999), 52, 16, 19999)
    assert vb.inspect("vp9", vp9).sizes == [(20000, 20000)]
    assert "20000x20000" in refused(VideoDecoder("vp9").decode, vp9, "frame 0")


def test_decoded_size_checked_again_before_rgb(clips, monkeypatch):
    """Second line: a size the header pass missed is refused from FFmpeg's picture, before any RGB is made."""
    monkeypatch.setattr(vb, "inspect", lambda codec, data: vb.FrameInfo(keyframe=True, parameter_sets={"sps", "pps"}))
    monkeypatch.setattr(video_decoder, "MAX_PIXELS", 176 * 144 - 1)
    monkeypatch.setattr(video_decoder, "to_rgb", lambda frame: pytest.fail("converted an oversize picture"))
    msg = refused(VideoDecoder("h264").decode, clips["h264"][0], "frame 0")
    assert "the decoded picture is 176x144, above the limit" in msg


# ---------------------------------------------------------------------------------------- resources
def test_closed_decoders_leave_no_threads(clips):
    proc = psutil.Process()
    for codec in CODECS:                      # warm: libraries loaded, their static threads started
        d = VideoDecoder(codec, threads=2)
        d.decode(clips[codec][0])
        d.close()
    before = proc.num_threads()
    for _ in range(10):
        for codec in CODECS:
            d = VideoDecoder(codec, threads=2)
            d.decode(clips[codec][0])
            assert proc.num_threads() > before or codec in ("vp8", "vp9")   # slice threads while open
            d.close()
    assert proc.num_threads() == before


# ------------------------------------------------------------------------------- frames + handlers
def test_single_images_in_a_video_codec_are_refused(clips):
    msg = refused(frames.decode, clips["h264"][0], "h264", what="image")
    assert msg.startswith(f"image (h264, {len(clips['h264'][0])} bytes): a h264 frame only decodes with the frames "
                          f"before it") and "stream" in msg and "jpeg or png" in msg
    assert "not decoded by this service" in refused(frames.decode_in_stream, {}, b"\x12\x00", "av1", what="frame 1")


def test_stream_keeps_one_decoder_and_one_codec(clips):
    st: dict = {}
    for n, pkt in enumerate(clips["vp8"][:3]):
        assert frames.decode_in_stream(st, pkt, "vp8", what=f"frame {n}").shape == (144, 176, 3)
    dec = st[frames.STREAM_DECODER]
    assert dec.codec == "vp8" and dec.pictures == 3
    msg = refused(frames.decode_in_stream, st, clips["h264"][0], "H.264", what="frame 3")
    assert "this stream started as vp8; a stream carries one video codec" in msg
    rgb = clips["rgb"][0]      # raw frames may still come in between
    assert frames.decode_in_stream(st, rgb.tobytes(), "rgb", 176, 144, what="frame 4") is not None
    assert st[frames.STREAM_DECODER] is dec


@pytest.fixture(scope="module")
def svc():
    from workers.vision.service import VisionService
    s = VisionService({"max_frame_bytes": 32 * 2**20})
    yield s
    s.close()


def call(svc, method, req, frame, state):
    ctx, _ = make_test_context(SVC + method, payload=req.SerializeToString(), frame=frame, stream_state=state,
                               stream="s1" if state is not None else None)
    return svc.handlers()[SVC + method](ctx)


def close_state(st: dict) -> None:
    for v in st.values():
        if hasattr(v, "close"):
            v.close()


def test_unary_detect_faces_refuses_h264(svc, clips):
    with pytest.raises(WorkerError) as ei:
        call(svc, "DetectFaces", pb.ImageRequest(format="h264"), clips["h264"][0], None)
    assert ei.value.code == "INVALID_ARGUMENT" and "send compressed video in a stream" in ei.value.message


def test_stream_handler_answers_a_picture_less_frame_empty(svc, clips):
    nals = vb.nal_units(clips["h264"][0], "h264")
    sets = b"".join(b"\x00\x00\x00\x01" + bytes(n) for n in nals if n[0] & 0x1F in (7, 8))
    st: dict = {}
    r = pb.FaceDetectionResponse.FromString(call(svc, "StreamFaceDetection", pb.VideoFrame(
        format="h264", frame_number=4, timestamp_ms=120), sets, st))
    assert (r.frame_number, r.timestamp_ms, len(r.faces)) == (4, 120, 0)
    r = pb.FaceDetectionResponse.FromString(call(svc, "StreamFaceDetection", pb.VideoFrame(
        format="h264", frame_number=5), clips["h264"][0], st))
    assert len(r.faces) == 1
    dec = st[frames.STREAM_DECODER]
    close_state(st)
    assert dec.closed


def test_media_sequence_of_vp9_frames(svc):
    st: dict = {}
    rgbs = vm.gestures()
    for n, pkt in enumerate(vm.encode("vp9", rgbs)):
        ctx, _ = make_test_context(SVC + "ProcessMediaSequence", payload=pb.MediaSequenceFrame(
            frame_number=n, timestamp_ms=100 * n, format="vp9").SerializeToString(), frame=pkt, stream_state=st,
            stream="s1", end=False)
        assert svc.handlers()[SVC + "ProcessMediaSequence"](ctx) == b""
    ctx, _ = make_test_context(SVC + "ProcessMediaSequence", payload=b"", stream_state=st, stream="s1", end=True)
    r = pb.MediaSequenceResponse.FromString(svc.handlers()[SVC + "ProcessMediaSequence"](ctx))
    by = {lab.label: (lab.start_frame, lab.end_frame) for lab in r.labels}
    assert r.total_frames == 21 and by["face"] == (0, 20) and by["hand"] == (0, 20)
    assert st[frames.STREAM_DECODER].pictures == 21
    close_state(st)


def test_autoflip_h264_output(svc):
    rgbs = vm.gestures()[:6]
    st: dict = {}
    outs = [pb.VideoFrame.FromString(call(svc, "StreamAutoFlip", pb.VideoFrame(
        format="rgb", width=320, height=240, frame_number=n, timestamp_ms=40 * n,
        metadata={"aspect_ratio": "9:16", "output_format": "h264"}), rgb.tobytes(), st)) for n, rgb in enumerate(rgbs)]
    assert {(o.format, o.width, o.height) for o in outs} == {("h264", 136, 240)}
    infos = [vb.inspect("h264", o.frame_data) for o in outs]
    assert infos[0].keyframe and infos[0].parameter_sets == {"sps", "pps"} and infos[0].sizes == [(144, 240)]
    assert not any(i.keyframe for i in infos[1:])
    raw = sum(136 * 240 * 3 for _ in outs)
    assert sum(len(o.frame_data) for o in outs) < raw / 10
    dec = VideoDecoder("h264")
    for o, rgb in zip(outs, rgbs):
        x = int(o.metadata["crop_x"])
        assert mae(dec.decode(o.frame_data), rgb[:, x:x + 136]) < 6
    enc = st["h264_encoder"]
    # another aspect ratio: a new encoder, starting with an IDR at the new size
    o = pb.VideoFrame.FromString(call(svc, "StreamAutoFlip", pb.VideoFrame(
        format="rgb", width=320, height=240, frame_number=6, metadata={"aspect_ratio": "1:1", "output_format": "h264"}),
        rgbs[0].tobytes(), st))
    assert enc.closed and (o.width, o.height) == (240, 240) and vb.inspect("h264", o.frame_data).keyframe
    assert dec.decode(o.frame_data).shape == (240, 240, 3)
    new = st["h264_encoder"]
    close_state(st)
    assert new.closed


def test_autoflip_h264_above_the_response_limit_goes_jpeg_then_idr():
    """An access unit too big for the client's message limit cannot be shrunk without breaking the frames after
    it: that frame goes as jpeg, and the next access unit is an IDR the client's decoder can restart from."""
    from workers.vision.service import VisionService
    noise = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)   # IDR ~46 KB at 240x240
    rgbs = [noise] + vm.gestures()[:2]                                                 # IDR ~1.5 KB
    s = VisionService({"max_response_bytes": 20000})
    st: dict = {}
    try:
        outs = [pb.VideoFrame.FromString(call(s, "StreamAutoFlip", pb.VideoFrame(
            format="rgb", width=320, height=240, frame_number=n, metadata={"aspect_ratio": "1:1",
                                                                           "output_format": "h264"}),
            rgb.tobytes(), st)) for n, rgb in enumerate(rgbs)]
    finally:
        close_state(st)
        s.close()
    assert outs[0].format == "jpeg" and outs[0].frame_data[:3] == b"\xff\xd8\xff" and len(outs[0].frame_data) < 20000
    note = outs[0].metadata["response_limit"]
    assert note.startswith("h264 240x240 would be ") and note.endswith("the next h264 frame is an IDR")
    assert [o.format for o in outs[1:]] == ["h264", "h264"]
    assert vb.inspect("h264", outs[1].frame_data).keyframe and not vb.inspect("h264", outs[2].frame_data).keyframe
    assert "response_limit" not in outs[1].metadata
    dec = VideoDecoder("h264")      # a client that drops the jpeg frame decodes from the IDR on
    assert dec.decode(outs[1].frame_data).shape == (240, 240, 3) and dec.decode(outs[2].frame_data) is not None
