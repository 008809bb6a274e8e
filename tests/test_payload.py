"""common/payload.py, the one payload codec: each shape packed by the facade and unpacked by a worker's
`ctx.side` gives back the bytes it took (one field, packed refs, KServe raw pieces), through shared memory or
inline; bad references answer INVALID_ARGUMENT naming the piece; the wire cut parses like protobuf."""
from __future__ import annotations

import os

import pytest
from google.protobuf.message import DecodeError

from common import payload as codec
from common.status import StatusError
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X
from protos.kserve import grpc_service_pb2 as K
from shm.pool import SlotAllocator, SlotReader, create_pool_fd
from workers.context import RequestContext, make_test_context

FRAME = bytes(range(256)) * 400     # above CUT_MIN_BYTES: cut from the wire


def video_frame(**kw) -> ML.VideoFrame:
    return ML.VideoFrame(frame_data=FRAME, format="rgb", width=64, height=40, frame_number=7, timestamp_ms=99,
                         metadata={"running_mode": "video", "max_pending": "3"}, **kw)


def old_split(raw: bytes, field: str) -> tuple:
    """What the facade did before the codec: parse whole, take the field, clear it, serialise the rest."""
    msg = ML.VideoFrame.FromString(raw)
    data = getattr(msg, field)
    msg.ClearField(field)
    return msg.SerializeToString(), data


# ---- one field --------------------------------------------------------------------------------------
def test_one_field_cut_from_the_wire_sends_the_bytes_the_full_parse_sent():
    raw = video_frame().SerializeToString()
    msg, side = codec.field_parser(ML.VideoFrame, "frame_data")(raw)
    assert isinstance(side, memoryview) and bytes(side) == FRAME     # a view of the wire bytes: no copy
    assert not msg.frame_data and msg.frame_number == 7 and msg.metadata["max_pending"] == "3"
    packed = codec.pack(msg, field="frame_data", side=side)
    assert (packed.payload, bytes(packed.side)) == old_split(raw, "frame_data")
    assert packed.header is None


@pytest.mark.parametrize("n", [10, 30000])   # below and above CUT_MIN_BYTES: the same answer
def test_one_field_repeated_on_the_wire_keeps_the_last_like_protobuf(n):
    first = ML.VideoFrame(frame_data=b"old" * n, frame_number=1).SerializeToString()
    last = ML.VideoFrame(frame_data=b"new" * n, format="jpeg").SerializeToString()
    msg, side = codec.field_parser(ML.VideoFrame, "frame_data")(first + last)
    assert bytes(side) == b"new" * n and msg.frame_number == 1 and msg.format == "jpeg" and not msg.frame_data
    assert codec.pack(msg, field="frame_data", side=side).payload == old_split(first + last, "frame_data")[0]


def test_one_field_empty_or_absent_sends_no_side_buffer():
    parse = codec.field_parser(ML.VideoFrame, "frame_data")
    for m in (ML.VideoFrame(frame_number=3), ML.VideoFrame(frame_data=b"", frame_number=3)):
        msg, side = parse(m.SerializeToString())
        assert side is None and msg.frame_number == 3
        assert codec.pack(msg, field="frame_data").side is None


def test_malformed_or_long_messages_are_parsed_whole():
    parse = codec.field_parser(ML.VideoFrame, "frame_data")
    raw = video_frame().SerializeToString()
    with pytest.raises(DecodeError):          # truncated: the protobuf library's own error, as before
        parse(raw[:-3])
    assert codec.cut_field(raw[:-3], 1) is None
    many = ML.VideoFrame(frame_data=FRAME, metadata={f"k{i}": "v" for i in range(codec.MAX_CUT_FIELDS + 1)})
    assert codec.cut_field(many.SerializeToString(), 1) is None
    msg, side = parse(many.SerializeToString())  # the whole-parse path still moves the field
    assert bytes(side) == FRAME and not msg.frame_data and len(msg.metadata) == codec.MAX_CUT_FIELDS + 1


def test_only_plain_bytes_fields_take_the_one_field_shape():
    with pytest.raises(ValueError):
        codec.field_parser(ML.VideoFrame, "format")


def test_worker_reads_one_field_from_the_side_else_from_the_message():
    req = video_frame()
    ctx, _ = make_test_context("m", payload=b"", frame=b"\x01\x02")
    assert bytes(ctx.side.field(req, "frame_data")) == b"\x01\x02"
    ctx, _ = make_test_context("m", payload=b"")
    assert ctx.side.field(req, "frame_data") == FRAME


# ---- refs (Pipelines Run / RunStream) -----------------------------------------------------------------
def pipeline_request() -> X.PipelineRequest:
    req = X.PipelineRequest(model="m")
    req.inputs.add(text="hello")
    req.inputs.add(image=b"I" * 300)
    req.inputs.add(audio=b"A" * 50)
    return req


def test_refs_round_trip():
    req = pipeline_request()
    packed = codec.pack(req, refs="inputs")
    assert bytes(packed.side) == b"I" * 300 + b"A" * 50
    sent = X.PipelineRequest.FromString(packed.payload)
    assert not sent.inputs[1].image and (sent.inputs[1].image_ref.offset, sent.inputs[1].image_ref.length) == (0, 300)
    assert (sent.inputs[2].audio_ref.offset, sent.inputs[2].audio_ref.length) == (300, 50)
    ctx, _ = make_test_context("m", payload=packed.payload, frame=packed.side)
    assert ctx.side.ref(sent.inputs[0], "image", "inputs[0].image") is None
    assert bytes(ctx.side.ref(sent.inputs[1], "image", "inputs[1].image")) == b"I" * 300
    assert bytes(ctx.side.ref(sent.inputs[2], "audio", "inputs[2].audio")) == b"A" * 50


def test_inline_bytes_win_over_a_ref():
    item = X.PipelineInput(image=b"inline")
    item.image_ref.length = 3
    ctx, _ = make_test_context("m", frame=b"xyz")
    assert ctx.side.ref(item, "image", "inputs[0].image") == b"inline"


@pytest.mark.parametrize("offset,length", [(0, 11), (-1, 2), (5, -1), (10, 1)])
def test_a_ref_outside_the_buffer_is_invalid_argument_naming_the_piece(offset, length):
    item = X.PipelineInput()
    item.image_ref.offset, item.image_ref.length = offset, length
    ctx, _ = make_test_context("m", frame=b"0123456789")
    with pytest.raises(StatusError) as ei:
        ctx.side.ref(item, "image", "inputs[4].image")
    assert ei.value.code == "INVALID_ARGUMENT" and "inputs[4].image" in ei.value.message
    assert f"{offset}+{length}" in ei.value.message and "10-byte" in ei.value.message


def test_a_ref_without_a_side_buffer_is_invalid_argument():
    item = X.PipelineInput()
    item.audio_ref.length = 1
    ctx, _ = make_test_context("m")
    with pytest.raises(StatusError) as ei:
        ctx.side.ref(item, "audio", "inputs[2].audio")
    assert ei.value.code == "INVALID_ARGUMENT" and "inputs[2].audio" in ei.value.message


# ---- pieces (KServe raw_input_contents) --------------------------------------------------------------
def infer_request(*raws) -> K.ModelInferRequest:
    req = K.ModelInferRequest(model_name="m")
    req.raw_input_contents.extend(raws)
    return req


def test_pieces_round_trip():
    packed = codec.pack(infer_request(b"a" * 40, b"", b"c" * 8), pieces="raw_input_contents", min_bytes=16)
    assert bytes(packed.side) == b"a" * 40 + b"c" * 8 and packed.header == {codec.LENGTHS: [40, 0, 8]}
    sent = K.ModelInferRequest.FromString(packed.payload)
    assert not sent.raw_input_contents
    ctx, _ = make_test_context("m", payload=packed.payload, frame=packed.side, **packed.header)
    assert [bytes(p) for p in ctx.side.pieces(sent, "raw_input_contents", "raw")] == [b"a" * 40, b"", b"c" * 8]


def test_small_pieces_stay_in_the_message():
    packed = codec.pack(infer_request(b"a" * 8), pieces="raw_input_contents", min_bytes=16)
    assert packed.side is None and packed.header is None
    sent = K.ModelInferRequest.FromString(packed.payload)
    ctx, _ = make_test_context("m", payload=packed.payload)
    assert ctx.side.pieces(sent, "raw_input_contents", "raw") == [b"a" * 8]


def test_pieces_that_do_not_cut_the_buffer_are_refused_naming_the_field():
    ctx, _ = make_test_context("m", frame=b"x" * 10, raw_lengths=[6, 6])
    with pytest.raises(StatusError) as ei:
        ctx.side.pieces(infer_request(), "raw_input_contents", "raw_input_contents")
    assert ei.value.code == "INTERNAL" and "raw_input_contents" in ei.value.message
    assert "holds 10 bytes" in ei.value.message
    ctx, _ = make_test_context("m", frame=b"x" * 10, raw_lengths=[10])
    with pytest.raises(StatusError) as ei:
        ctx.side.pieces(infer_request(b"y"), "raw_input_contents", "raw_input_contents")
    assert ei.value.code == "INVALID_ARGUMENT" and "raw_input_contents" in ei.value.message


# ---- transport: one shared-memory slot, else inline ---------------------------------------------------
@pytest.fixture
def pool():
    fd = create_pool_fd(2, 4096)
    alloc, reader = SlotAllocator(fd, 2, 4096), SlotReader(fd, 2, 4096)
    yield alloc, reader
    alloc.close()
    reader.close()
    os.close(fd)


def worker_side(header: dict, frames: list, reader) -> codec.Side:
    ctx = RequestContext(request_id="r", method="m", header=header, frames=frames,
                         _frame_view=lambda: codec.side_view(header, frames, reader))
    return ctx.side


def test_side_buffer_through_a_shared_memory_slot(pool):
    alloc, reader = pool
    header, frames = {}, [b"payload"]
    ref = codec.attach(header, frames, memoryview(FRAME[:3000]), alloc.put)
    assert ref is not None and header[codec.SHM] == ref.to_wire() and frames == [b"payload"]
    side = worker_side(header, frames, reader)
    assert bytes(side.field(ML.VideoFrame(), "frame_data")) == FRAME[:3000]
    alloc.release(ref)                         # a view kept past its slot's release is detected
    with pytest.raises(StatusError) as ei:
        codec.side_view(header, frames, reader)
    assert ei.value.code == "ABORTED"


@pytest.mark.parametrize("size", [100, 5000])
def test_side_buffer_inline_without_a_pool_or_a_slot_big_enough(pool, size):
    alloc, reader = pool
    for put in (None, alloc.put):
        header, frames = {}, [b"payload"]
        if put is None or size > 4096:
            assert codec.attach(header, frames, FRAME[:size], put) is None
            assert header == {codec.INLINE: True} and frames[1] == FRAME[:size]
            assert bytes(worker_side(header, frames, reader).buffer()) == FRAME[:size]


def test_a_slot_for_a_worker_without_a_pool_or_a_bad_reference_is_refused(pool):
    _, reader = pool
    with pytest.raises(StatusError) as ei:
        codec.side_view({codec.SHM: [0, 1, 10]}, [b""], None)
    assert ei.value.code == "INTERNAL"
    with pytest.raises(StatusError) as ei:
        codec.side_view({codec.SHM: [9, 1, 10]}, [b""], reader)
    assert ei.value.code == "INVALID_ARGUMENT"
    assert codec.side_view({}, [b""], reader) is None
