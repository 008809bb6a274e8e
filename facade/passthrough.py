"""gRPC handlers that forward a method to a worker pool, for every streaming shape.

Requests are parsed once (to move frame bytes into shared memory and read the model name); worker
replies are already-serialized response messages and go back to the client untouched (identity
serializer). Bidi streams have a running mode (MediaPipe Tasks' names; docs/vision.md):
- VIDEO, the default: every frame is answered, in order. At most `max_pending` frames wait (default 2)
  besides the `depth` in flight; beyond that the reader stops pulling messages, so gRPC flow control makes
  the client's writes wait (back-pressure) and the facade's memory stays bounded.
- LIVE_STREAM, chosen per stream by call metadata `running-mode: live_stream` (or `running_mode` in the
  first message's metadata map): beyond `max_pending` the OLDEST waiting frame is dropped, so a slow model
  never builds latency; drops are counted (Stats `dropped_stream_frames`, trailing metadata
  `dropped-frames`). Routes with live_stream=False (audio) refuse it: they never drop.
Every route's side bytes (its frame_field, or the packed_field's blobs) travel through the one payload codec,
common/payload.py: a one-field route's frame is cut out of the wire bytes as they arrive (the rest of the
message is parsed once, the frame is never copied into a protobuf), then goes to one shm slot.
Request bytes held by the facade are bounded by a ByteBudget (facade/budget.py): per stream and in total.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import Optional

import grpc

from common import payload as codec
from facade.broker_client import BrokerClient
from facade.budget import DEFAULT_BUFFER_MB, STREAM_BYTES, ByteBudget
from facade.errors import BrokerError
from facade.routes import CLIENT_STREAM, SERVER_STREAM, UNARY, Route, message_class, method_descriptor, shape_of

log = logging.getLogger("facade")

DEFAULT_PIPELINE_DEPTH = 2
DEFAULT_MAX_PENDING = max(2, DEFAULT_PIPELINE_DEPTH)

VIDEO, LIVE_STREAM = "video", "live_stream"
MODE_KEYS = ("running-mode", "running_mode")
MODES_HELP = ("use 'video' (the default: every frame answered, in order; your writes wait while the service "
              "is behind) or 'live_stream' (the oldest waiting frame is dropped beyond max_pending; drops are "
              "counted in the trailing metadata 'dropped-frames' and in Stats)")


def _identity(b: bytes) -> bytes:
    return b


def _sized(req_cls, route: Route):
    """Deserializer giving (message, wire size, side bytes or None): the size is what the budget charges
    (ByteSize() would serialize the message again); a one-field route's frame is already cut out of the
    message (common/payload.field_parser), other routes pack theirs when sent."""
    if route.frame_field and not route.packed_field:
        parse_cut = codec.field_parser(req_cls, route.frame_field)

        def deserialize_cut(raw: bytes):
            msg, side = parse_cut(raw)
            return msg, len(raw), side
        return deserialize_cut
    parse = req_cls.FromString

    def deserialize(raw: bytes):
        return parse(raw), len(raw), None
    return deserialize


# compressed video formats (workers/vision/frames.py): a frame decodes only after the frames before it
COMPRESSED_VIDEO = ("h264", "avc", "h.264", "hevc", "h265", "h.265", "vp8", "vp9", "av1")


def compressed_format(msg) -> str:
    """The message's `format` when it is compressed video (which live_stream's drops would break), else ''."""
    fmt = getattr(msg, "format", "")
    f = fmt.strip().lower() if isinstance(fmt, str) else ""
    return f if f in COMPRESSED_VIDEO else ""


def max_pending_of(msg, current: int) -> int:
    """The stream's `max_pending` metadata entry (1..64), else `current`. A function, so that no
    reference to the message's map outlives the call (it would keep a dropped frame alive)."""
    meta = getattr(msg, "metadata", None)
    if meta is not None and "max_pending" in meta:
        try:
            return max(1, min(64, int(meta["max_pending"])))
        except ValueError:
            pass
    return current


def mode_of(value: str, where: str) -> str:
    """'video' / 'live_stream' from a metadata value (case-insensitive, '-' = '_'); ValueError otherwise."""
    mode = value.strip().lower().replace("-", "_")
    if mode not in (VIDEO, LIVE_STREAM):
        raise ValueError(f"{where} {value[:40]!r} is not a running mode: {MODES_HELP}")
    return mode


def call_mode_of(context) -> Optional[str]:
    """The running mode of the call metadata (key `running-mode`), None when absent."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() in MODE_KEYS:
            return mode_of(value if isinstance(value, str) else value.decode("latin-1"), f"call metadata {key}")
    return None


def frame_mode_of(msg) -> Optional[str]:
    """The running mode of a message's metadata map (key `running_mode` or `running-mode`), None when absent."""
    meta = getattr(msg, "metadata", None)
    if meta is not None:
        for key in MODE_KEYS:
            if key in meta:
                return mode_of(meta[key], f"the first frame's metadata {key}")
    return None


def stream_mode(route: Route, call: Optional[str], first: Optional[str]) -> str:
    """The stream's mode from the call metadata and the first message; ValueError names the conflict."""
    if call and first and call != first:
        raise ValueError(f"call metadata running-mode {call!r} and the first frame's metadata running_mode "
                         f"{first!r} disagree: send one of them ({MODES_HELP})")
    mode = call or first or VIDEO
    if mode == LIVE_STREAM and not route.live_stream:
        raise ValueError(f"{route.method} never drops what it is sent (it applies back-pressure): running mode "
                         f"'live_stream' is for the vision streams; omit running-mode or send 'video'")
    return mode


def timeout_of(context) -> Optional[float]:
    t = context.time_remaining()
    return t if t is not None and t < 1e8 else None


async def abort(context, exc: BrokerError):
    await context.abort(exc.status, exc.message)


class PassThrough:
    def __init__(self, client: BrokerClient, budget: Optional[ByteBudget] = None):
        self.client = client
        self.budget = budget or ByteBudget(DEFAULT_BUFFER_MB * 2**20)
        self.dropped_frames = 0

    @staticmethod
    def _split(route: Route, msg, side=None) -> tuple[bytes, Optional[bytes], str]:
        packed = codec.pack(msg, field=route.frame_field, refs=route.packed_field, side=side)
        model = getattr(msg, route.model_field) if route.model_field else ""
        return packed.payload, packed.side, model

    def handler(self, route: Route):
        md = method_descriptor(route.service, route.method)
        req_cls = message_class(md.input_type)
        shape = shape_of(md)
        client = self.client
        budget = self.budget
        deserialize = _sized(req_cls, route)

        if shape == UNARY:
            async def unary(request, context):
                request, nbytes, side = request
                if not budget.admit(nbytes):
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, budget.refusal(route.path, nbytes))
                try:
                    payload, frame, model = self._split(route, request, side)
                    return await client.unary(route.path, route.pool, payload, model=model,
                                              timeout=timeout_of(context), frame=frame)
                except BrokerError as exc:
                    await abort(context, exc)
                finally:
                    budget.release(nbytes)
            return grpc.unary_unary_rpc_method_handler(unary, deserialize, _identity)

        if shape == SERVER_STREAM:
            async def server_stream(request, context):
                request, nbytes, side = request
                if not budget.admit(nbytes):
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, budget.refusal(route.path, nbytes))
                try:
                    payload, frame, model = self._split(route, request, side)
                    async for part in client.stream(route.path, route.pool, payload, model=model,
                                                    timeout=timeout_of(context), frame=frame):
                        yield part
                except BrokerError as exc:
                    await abort(context, exc)
                finally:
                    budget.release(nbytes)
            return grpc.unary_stream_rpc_method_handler(server_stream, deserialize, _identity)

        if shape == CLIENT_STREAM:
            async def client_stream(request_iterator, context):
                stream_id = uuid.uuid4().hex
                try:
                    async for msg, nbytes, side in request_iterator:
                        budget.charge(nbytes)
                        try:
                            payload, frame, model = self._split(route, msg, side)
                            await client.unary(route.path, route.pool, payload, model=model, frame=frame,
                                               timeout=timeout_of(context), stream=stream_id, extra={"end": False})
                        finally:
                            budget.release(nbytes)
                        del msg, side, payload, frame
                        await budget.room()  # past the budget, stop pulling: flow control pushes back
                    return await client.unary(route.path, route.pool, b"", timeout=timeout_of(context),
                                              stream=stream_id, extra={"end": True})
                except BrokerError as exc:
                    await abort(context, exc)
                finally:
                    await client.close_stream(stream_id)
            return grpc.stream_unary_rpc_method_handler(client_stream, deserialize, _identity)

        async def bidi(request_iterator, context):
            try:
                call_mode = call_mode_of(context)
                if call_mode:
                    stream_mode(route, call_mode, None)  # refused at once when the route cannot drop
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{route.path}: {exc}")
            stream_id = uuid.uuid4().hex
            pending: deque = deque()      # (message, size, side) received, not yet sent to the worker
            outstanding: deque = deque()  # (task, size) sent, reply not yet yielded (in order)
            # bytes: size of `pending`; held: bytes this stream has charged to the budget (pending,
            # outstanding, the message in the reader's hands), all released when the stream ends
            state = {"done": False, "max_pending": DEFAULT_MAX_PENDING, "depth": DEFAULT_PIPELINE_DEPTH,
                     "clean_end": False, "sent": 0, "closed_by_client": False, "bytes": 0, "held": 0,
                     "mode": None, "error": None, "dropped": 0}
            wake = asyncio.Event()
            room = asyncio.Event()        # set when `pending` shrinks (VIDEO back-pressure)
            loop = asyncio.get_running_loop()

            def free(nbytes: int) -> None:
                state["held"] -= nbytes
                budget.release(nbytes)

            def over_stream_budget(frames: int = 0, nbytes: int = 0) -> bool:
                # pending (plus `frames` more) keeps at most max_pending frames, max(2 frames, STREAM_BYTES) bytes
                n = len(pending) + frames
                return n > state["max_pending"] or (n > 2 and state["bytes"] + nbytes > STREAM_BYTES)

            def count_drops() -> None:
                context.set_trailing_metadata((("dropped-frames", str(state["dropped"])),))

            async def reader():
                try:
                    async for msg, nbytes, side in request_iterator:
                        state["held"] += nbytes
                        budget.charge(nbytes)
                        if state["mode"] is None:  # the first message: settle the running mode
                            try:
                                state["mode"] = stream_mode(route, call_mode, frame_mode_of(msg))
                            except ValueError as exc:
                                state["error"] = f"{route.path}: {exc}"
                                return
                            if state["mode"] == LIVE_STREAM:
                                count_drops()
                        state["max_pending"] = max_pending_of(msg, state["max_pending"])
                        if state["mode"] == LIVE_STREAM and compressed_format(msg):
                            state["error"] = (f"{route.path}: running mode 'live_stream' drops frames, and a "
                                              f"{compressed_format(msg)} frame cannot be decoded without the frames "
                                              f"before it: send compressed video in running mode 'video' (the "
                                              f"default), or decoded frames (rgb, yuv420, jpeg) in live_stream")
                            return
                        if state["mode"] == VIDEO:
                            # never drop: stop reading until the worker catches up, so gRPC flow
                            # control makes the client's writes wait instead
                            while pending and over_stream_budget(1, nbytes):
                                room.clear()
                                await room.wait()
                        if route.close_field and getattr(msg, route.close_field, False):
                            state["closed_by_client"] = True
                        pending.append((msg, nbytes, side))
                        state["bytes"] += nbytes
                        del msg, side
                        while state["mode"] == LIVE_STREAM and len(pending) > 1 and over_stream_budget():
                            dropped = pending.popleft()[1]  # drop the OLDEST waiting frame: bounded latency
                            state["bytes"] -= dropped
                            free(dropped)
                            state["dropped"] += 1
                            self.dropped_frames += 1
                            count_drops()
                        wake.set()
                        # past the facade's budget, stop pulling messages: gRPC flow control then
                        # pushes back on the client instead of the facade buffering
                        await budget.room()
                    state["clean_end"] = True
                except Exception:  # the client went away mid-stream
                    pass
                finally:
                    state["done"] = True
                    wake.set()

            def send(msg, side=None):
                state["sent"] += 1
                payload, frame, model = self._split(route, msg, side)
                return loop.create_task(client.unary(route.path, route.pool, payload, model=model, frame=frame,
                                                     timeout=timeout_of(context), stream=stream_id))

            task = loop.create_task(reader())
            try:
                while True:
                    # keep up to `depth` frames in flight so the worker never waits on the transport
                    while pending and len(outstanding) < state["depth"]:
                        msg, nbytes, side = pending.popleft()
                        state["bytes"] -= nbytes
                        outstanding.append((send(msg, side), nbytes))
                        del msg, side
                        room.set()
                    if outstanding:
                        head, nbytes = outstanding[0]
                        if not head.done():
                            wake.clear()
                            waiter = loop.create_task(wake.wait())
                            try:
                                await asyncio.wait({head, waiter}, return_when=asyncio.FIRST_COMPLETED)
                            finally:  # also when the client cancels: a pending waiter is destroyed pending
                                waiter.cancel()
                            if not head.done():
                                continue  # a new frame arrived: top up the pipeline first
                        outstanding.popleft()
                        free(nbytes)
                        try:
                            reply = head.result()
                        except BrokerError as exc:
                            await abort(context, exc)
                            return
                        yield reply
                        continue
                    if state["done"] and not pending:
                        break
                    wake.clear()
                    if not pending and not state["done"]:
                        await wake.wait()
                if state["error"]:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, state["error"])
                    return
                if (route.close_field and state["clean_end"] and state["sent"]
                        and not state["closed_by_client"]):
                    try:
                        reply = await send(req_cls(**{route.close_field: True}))
                    except BrokerError as exc:
                        await abort(context, exc)
                        return
                    if reply:
                        yield reply
            finally:
                task.cancel()
                for t, _ in outstanding:
                    t.cancel()
                if outstanding:
                    await asyncio.gather(*(t for t, _ in outstanding), return_exceptions=True)
                await client.close_stream(stream_id)
                free(state["held"])
        return grpc.stream_stream_rpc_method_handler(bidi, deserialize, _identity)
