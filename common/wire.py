"""The wire between facade, broker and workers (Majordomo-style, msgpack header + raw frames); shared by all three.

Every message is multipart: [MAGIC, command, header(msgpack map), *payload frames].
On a ROUTER socket the peer identity frame comes first. No pickle anywhere; msgpack is decoded
with size limits so a hostile frame cannot make us allocate without bound.
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Any, Sequence

import msgpack

from common.options import as_bool

MAGIC = b"PML1"

# facade -> broker
REQUEST = b"REQUEST"
CANCEL = b"CANCEL"
STREAM_CLOSE = b"STREAM_CLOSE"
HELLO = b"HELLO"            # facade announces itself (and re-announces after a broker restart)
# broker -> facade
PARTIAL = b"PARTIAL"
FINAL = b"FINAL"
ERROR = b"ERROR"
POOLS = b"POOLS"            # pool liveness summary, pushed on every change
# broker -> worker
STOP = b"STOP"
# worker -> broker
READY = b"READY"
HEARTBEAT = b"HEARTBEAT"
LOADED = b"LOADED"
UNLOADED = b"UNLOADED"
DISCONNECT = b"DISCONNECT"
DONE = b"DONE"              # the terminal reply went straight to the facade: free the credit, forward nothing

FACADE_COMMANDS = {REQUEST, CANCEL, STREAM_CLOSE, HELLO}
WORKER_COMMANDS = {READY, HEARTBEAT, PARTIAL, FINAL, ERROR, DONE, LOADED, UNLOADED, DISCONNECT}
TO_WORKER_COMMANDS = {REQUEST, CANCEL, STREAM_CLOSE, STOP}
TO_FACADE_COMMANDS = {PARTIAL, FINAL, ERROR, POOLS}

MAX_HEADER_BYTES = 1 << 20  # a header is small metadata; payloads travel as raw frames

# Internal methods answered by the broker itself (never reach a worker).
BROKER_QUERY_MODELS = "_broker/models"
BROKER_QUERY_STATS = "_broker/stats"


class ProtocolError(ValueError):
    """A frame that does not follow the protocol: counted and dropped by the receiver."""


def pack_header(header: dict) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def unpack_header(raw: bytes) -> dict:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types
        raise ProtocolError(f"undecodable header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a map")
    return header


def encode(command: bytes, header, frames: Sequence[bytes] = ()) -> list:
    """header: a dict, or the already-packed bytes of one (forwarded untouched by the broker)."""
    return [MAGIC, command, header if isinstance(header, bytes) else pack_header(header), *frames]


def decode(parts: Sequence[Any], allowed: set) -> tuple[bytes, dict, list]:
    """Parse [MAGIC, command, header, *frames]; raise ProtocolError when malformed."""
    if len(parts) < 3:
        raise ProtocolError(f"expected at least 3 frames, got {len(parts)}")
    magic, command = bytes(parts[0]), bytes(parts[1])
    if magic != MAGIC:
        raise ProtocolError("bad magic frame")
    if command not in allowed:
        raise ProtocolError(f"unknown command {command[:32]!r}")
    header = unpack_header(bytes(parts[2]))
    return command, header, list(parts[3:])


# Direct replies as unix datagrams (docs/ARCHITECTURE.md, "Direct replies"): one message in one datagram,
# [count u32][count x length u32][the parts back to back], little-endian. A datagram costs one system call
# each side; a ZeroMQ message also wakes each side's I/O thread, ~40 us more per hop on a loaded machine.
DATAGRAM_MAX = 64 * 1024   # bigger replies take ZeroMQ
_U32 = struct.Struct("<I")


def datagram_buffers(parts: Sequence[Any]) -> list:
    """The buffers of one datagram holding `parts` (for socket.sendmsg: no copy of the parts)."""
    sizes = [memoryview(p).nbytes for p in parts]
    return [struct.pack(f"<{len(sizes) + 1}I", len(sizes), *sizes), *parts]


def datagram_size(buffers: Sequence[Any]) -> int:
    return sum(memoryview(b).nbytes for b in buffers)


def send_datagram(sock: socket.socket, path: str, parts: Sequence[Any]) -> bool:
    """`parts` as one datagram from the non-blocking `sock` to the socket at `path`; False (nothing sent) when
    it is over DATAGRAM_MAX or cannot go now: EAGAIN (the receiver's queue is full), ENOENT / ECONNREFUSED
    (nobody there), EMSGSIZE. The caller then takes ZeroMQ."""
    buffers = datagram_buffers(parts)
    if datagram_size(buffers) > DATAGRAM_MAX:
        return False
    try:
        sock.sendmsg(buffers, (), 0, path)
    except OSError:
        return False
    return True


# Datagram hops (docs/ARCHITECTURE.md, "Datagram hops"): requests outside any stream and their CANCELs go
# facade -> broker -> local worker as datagrams too, when they fit; PML_DGRAM_HOPS=0 turns that off.
DGRAM_COMMANDS = {REQUEST, CANCEL}
DGRAM_WORKER_COMMANDS = {DONE}   # worker -> broker, from the worker's bound w-<id>.dgram


def dgram_hops_on() -> bool:
    """PML_DGRAM_HOPS (default on)."""
    return as_bool(os.environ.get("PML_DGRAM_HOPS"), True, name="PML_DGRAM_HOPS")


def ipc_folder(endpoint: str) -> str:
    """The folder of an ipc:// endpoint's socket (the run folder); '' for any other transport."""
    return os.path.dirname(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else ""


def named_in(path: Any, folder: str, prefix: str, suffix: str) -> bool:
    """`path` is a file `<prefix>...<suffix>` directly in `folder`."""
    return (isinstance(path, str) and bool(folder) and os.path.dirname(path) == folder
            and os.path.basename(path).startswith(prefix) and path.endswith(suffix))


def bind_datagram(path: str) -> socket.socket:
    """A non-blocking unix datagram socket bound at `path` (a stale file there is replaced); OSError when
    it cannot be."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
    except OSError:
        sock.close()
        raise
    return sock


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def split_datagram(data: bytes) -> list:
    """The parts of a datagram made by datagram_buffers; ProtocolError when it does not add up (also a
    datagram cut short by a receive buffer smaller than it)."""
    if len(data) < 4:
        raise ProtocolError(f"datagram of {len(data)} bytes")
    count = _U32.unpack_from(data)[0]
    start = 4 * (count + 1)
    if count > 64 or start > len(data):
        raise ProtocolError(f"datagram of {len(data)} bytes announces {count} parts")
    sizes = struct.unpack_from(f"<{count}I", data, 4)
    if start + sum(sizes) != len(data):
        raise ProtocolError(f"datagram of {len(data)} bytes, parts add up to {start + sum(sizes)}")
    parts = []
    for n in sizes:
        parts.append(data[start:start + n])
        start += n
    return parts


def error_header(request_id: str, code: str, message: str) -> dict:
    return {"id": request_id, "code": code, "message": message}
