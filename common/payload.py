"""The one payload codec: a request travels as its header message plus ONE side buffer of bytes, and back.

Big bytes fields never ride inside the protobuf payload through the broker. The facade packs them into
one side buffer, which the facade's BrokerClient puts into one shared-memory slot (REQUEST header
``shm`` = [slot, generation, nbytes]) or, when no slot fits, sends inline as the REQUEST's second ZeroMQ
frame (header ``frame_inline``). Three shapes, each with its packer (facade) and unpacker (worker):

- one field (a route's ``frame_field``: VideoFrame.frame_data, ImageRequest.image_data, AudioChunk.pcm..):
  the field's bytes ARE the side buffer; the field is cleared. `field_parser` cuts it out of the wire
  bytes, so the facade parses the rest of the message once and never copies the frame into a protobuf.
  Worker: ``ctx.side.field(msg, "frame_data")`` = the side buffer, else the message's own field.
- refs (a route's ``packed_field``, Pipelines Run/RunStream): every element of a repeated message field
  whose bytes field ``<f>`` has a ``<f>_ref`` BlobRef sibling gives its bytes to the side buffer and keeps
  (offset, length) in ``<f>_ref``. Worker: ``ctx.side.ref(element, "image", where)``.
- pieces (KServe ModelInfer's ``raw_input_contents``, when they total at least ``min_bytes``): the
  repeated bytes field is packed in order, its lengths go in the header (``raw_lengths``).
  Worker: ``ctx.side.pieces(msg, "raw_input_contents", where)``.

Every unpacker checks bounds and names the piece: a reference outside the buffer is INVALID_ARGUMENT
(a client can set a BlobRef itself); lengths that disagree with the buffer the facade built are INTERNAL.
No heavy imports: the facade and every worker import this.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from common.status import StatusError
from shm.pool import SlotRef, StaleSlotError

# REQUEST header keys of the side buffer (the ZeroMQ wire, docs/ARCHITECTURE.md "Wire")
SHM = "shm"                  # [slot, generation, nbytes]: the buffer is in that shared-memory slot
INLINE = "frame_inline"      # True: the buffer is the REQUEST's second payload frame
LENGTHS = "raw_lengths"      # the pieces shape: one length per element of the packed repeated field

# a message with more top-level fields than this is parsed whole (the wire cut is a fast path, not a
# loop a client can make long); so is one smaller than CUT_MIN_BYTES (copying a small field costs less
# than scanning the wire in Python)
MAX_CUT_FIELDS = 256
CUT_MIN_BYTES = 64 * 1024
REF_SUFFIX = "_ref"


@dataclass
class Packed:
    """A request ready for the broker: the serialized message, its side buffer (or None) and header entries."""
    payload: bytes
    side: Optional[object] = None     # bytes or memoryview
    header: Optional[dict] = None


# ---- facade side: pack ----------------------------------------------------------------------------
class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed()
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def cut_field(raw: bytes, number: int, limit: int = MAX_CUT_FIELDS) -> Optional[tuple[bytes, Optional[memoryview]]]:
    """(the wire bytes without top-level length-delimited field `number`, a view of its last value or None),
    or None when the bytes are not a plain message (truncated, groups, too many fields): parse them whole.
    Protobuf keeps the last occurrence of a singular field, so every occurrence is cut and the last kept."""
    view = memoryview(raw)
    end, pos, start, fields = len(raw), 0, 0, 0
    keep: list = []
    side = None
    try:
        while pos < end:
            fields += 1
            if fields > limit:
                return None
            tag_at = pos
            key, pos = _varint(raw, pos, end)
            wire = key & 7
            if wire == 0:
                _, pos = _varint(raw, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = _varint(raw, pos, end)
                value_at = pos
                pos += length
                if pos <= end and key >> 3 == number:
                    keep.append(view[start:tag_at])
                    start = pos
                    side = view[value_at:pos]
            else:
                return None
            if pos > end:
                return None
    except _Malformed:
        return None
    if not keep:
        return raw, None
    keep.append(view[start:end])
    return b"".join(keep), (side if len(side) else None)


def field_parser(msg_cls, field: str) -> Callable[[bytes], tuple]:
    """A request parser for a one-field route: raw wire bytes -> (message without `field`, side or None).

    The field's bytes stay a view of the wire bytes (no protobuf copy, no re-serialise); the rest of the
    message is parsed once. Bytes that are not a plain message are parsed whole, as the protobuf library
    would (its errors propagate unchanged)."""
    fd = msg_cls.DESCRIPTOR.fields_by_name[field]
    if fd.type != fd.TYPE_BYTES or fd.label == fd.LABEL_REPEATED or fd.has_presence or fd.containing_oneof:
        raise ValueError(f"{msg_cls.DESCRIPTOR.name}.{field}: the one-field shape needs a plain singular bytes field")
    parse, number = msg_cls.FromString, fd.number

    def parser(raw: bytes) -> tuple:
        cut = cut_field(raw, number) if len(raw) >= CUT_MIN_BYTES else None
        if cut is None:
            msg = parse(raw)
            return msg, pack_field(msg, field)
        rest, side = cut
        return parse(rest), side
    return parser


def pack_field(msg, field: str) -> Optional[bytes]:
    """One field: its bytes become the side buffer (None when empty); the field is cleared."""
    data = getattr(msg, field)
    if not data:
        return None
    msg.ClearField(field)
    return data


def pack_refs(msg, field: str) -> Optional[bytes]:
    """Refs: the bytes fields of every element of repeated `field` that have a `<name>_ref` BlobRef sibling
    go into one buffer; each element keeps (offset, length) in its ref and its bytes field is cleared."""
    parts: list = []
    offset = 0
    for item in getattr(msg, field):
        names = item.DESCRIPTOR.fields_by_name
        for fd in item.DESCRIPTOR.fields:
            if fd.type != fd.TYPE_BYTES or fd.name + REF_SUFFIX not in names:
                continue
            data = getattr(item, fd.name)
            if not data:
                continue
            ref = getattr(item, fd.name + REF_SUFFIX)
            ref.offset, ref.length = offset, len(data)
            parts.append(data)
            offset += len(data)
            item.ClearField(fd.name)
    return b"".join(parts) if parts else None


def pack_pieces(msg, field: str, min_bytes: int = 0) -> tuple[Optional[bytes], Optional[dict]]:
    """Pieces: repeated bytes `field` packed in order when it totals at least `min_bytes`, its lengths in
    the header; smaller ones stay in the message. Returns (side, header entries) or (None, None)."""
    pieces = getattr(msg, field)
    lengths = [len(p) for p in pieces]
    if not pieces or sum(lengths) < min_bytes:
        return None, None
    side = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    del pieces[:]
    return side, {LENGTHS: lengths}


def pack(msg, *, field: Optional[str] = None, refs: Optional[str] = None, pieces: Optional[str] = None,
         min_bytes: int = 0, side=None) -> Packed:
    """Move the bytes a route names out of `msg` (in place) and serialize the rest once. `side` is a buffer
    already cut from the wire by `field_parser` (the message then no longer holds the field)."""
    header = None
    if refs:
        side = pack_refs(msg, refs)
    elif pieces:
        side, header = pack_pieces(msg, pieces, min_bytes)
    elif field and side is None:
        side = pack_field(msg, field)
    return Packed(msg.SerializeToString(), side, header)


def attach(header: dict, frames: list, side, put: Optional[Callable]) -> Optional[SlotRef]:
    """Put a side buffer on a REQUEST: into a shared-memory slot by `put` (SlotAllocator.put, None = no
    pool), else inline as a second frame. Returns the slot to release on the terminal reply, or None."""
    ref = put(side) if put is not None else None
    if ref is not None:
        header[SHM] = ref.to_wire()
        return ref
    header[INLINE] = True
    frames.append(bytes(side))
    return None


# ---- worker side: unpack ----------------------------------------------------------------------------
def side_view(header: dict, frames: list, reader) -> Optional[memoryview]:
    """The side buffer of a received REQUEST: a zero-copy view of its shm slot (`reader`: shm.pool.SlotReader
    or None), or of its inline frame; None when the request has none."""
    wire = header.get(SHM)
    if wire is not None:
        if reader is None:
            raise StatusError("INTERNAL", "frame sent through shared memory but this worker has no pool")
        try:
            return reader.view_of(SlotRef.from_wire(wire))
        except StaleSlotError as exc:
            raise StatusError("ABORTED", f"{exc}; resend the frame") from None
        except ValueError as exc:
            raise StatusError("INVALID_ARGUMENT", str(exc)) from None
    if header.get(INLINE) and len(frames) > 1:
        return memoryview(frames[1])
    return None


class Side:
    """One request's side buffer as its handler reads it (`ctx.side`); the buffer is fetched on first use."""

    def __init__(self, fetch: Callable[[], Optional[memoryview]], header: dict):
        self._fetch = fetch
        self._header = header
        self._fetched = False
        self._buffer: Optional[memoryview] = None

    def buffer(self) -> Optional[memoryview]:
        """The whole side buffer (zero-copy), or None."""
        if not self._fetched:
            self._buffer = self._fetch()
            self._fetched = True
        return self._buffer

    def field(self, msg, name: str):
        """One field: the side buffer when the facade moved `name` there, else the message's own bytes."""
        buf = self.buffer()
        return buf if buf is not None and len(buf) else getattr(msg, name)

    def ref(self, item, name: str, where: str):
        """Refs: element `item`'s bytes `name`: inline when the client left them there, else the slice its
        `<name>_ref` points at; None when it has neither. A ref outside the buffer is INVALID_ARGUMENT."""
        inline = getattr(item, name)
        if inline:
            return inline
        if not item.HasField(name + REF_SUFFIX):
            return None
        ref = getattr(item, name + REF_SUFFIX)
        buf = self.buffer()
        if buf is None:
            raise StatusError("INVALID_ARGUMENT", f"{where}: refers to shared memory but none was sent")
        if ref.offset < 0 or ref.length < 0 or ref.offset + ref.length > len(buf):
            raise StatusError("INVALID_ARGUMENT", f"{where}: blob reference {ref.offset}+{ref.length} is outside "
                                                  f"the {len(buf)}-byte shared-memory frame")
        return buf[ref.offset:ref.offset + ref.length]

    def pieces(self, msg, name: str, where: str) -> list:
        """Pieces: repeated bytes `name` of `msg`, from the message or (packed by the facade) cut from the
        side buffer by the header's lengths."""
        lengths = self._header.get(LENGTHS)
        if lengths is None:
            return list(getattr(msg, name))
        if getattr(msg, name):
            raise StatusError("INVALID_ARGUMENT", f"{where}: both in the message and in the shared-memory frame")
        buf = self.buffer()
        if (buf is None or not isinstance(lengths, list) or not all(isinstance(n, int) and n >= 0 for n in lengths)
                or sum(lengths) != len(buf)):
            raise StatusError("INTERNAL", f"{where}: the frame holds {0 if buf is None else len(buf)} bytes, the "
                                          f"header's lengths {str(lengths)[:80]} do not cut it")
        out, pos = [], 0
        for n in lengths:
            out.append(buf[pos:pos + n])
            pos += n
        return out
