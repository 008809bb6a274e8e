"""gRPC handlers that forward a method to a worker pool, for every streaming shape.

Requests are parsed once (to move frame bytes into shared memory and read the model name); worker
replies are already-serialized response messages and go back to the client untouched (identity
serializer). Bidi streams keep at most `max_pending` frames waiting and drop the oldest beyond that,
so a slow model never builds unbounded latency; drops are counted. Routes with drop_oldest=False
(audio) never drop: the reader stops pulling messages instead (gRPC flow control = backpressure).
Routes with packed_field move several bytes fields of a repeated message into one shm blob.
Request bytes held by the facade are bounded by a ByteBudget (facade/budget.py): per stream and in total.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import Optional

import grpc

from facade.broker_client import BrokerClient
from facade.budget import DEFAULT_BUFFER_MB, STREAM_BYTES, ByteBudget
from facade.errors import BrokerError
from facade.routes import CLIENT_STREAM, SERVER_STREAM, UNARY, Route, message_class, method_descriptor, shape_of

log = logging.getLogger("facade")

DEFAULT_MAX_PENDING = 2
DEFAULT_PIPELINE_DEPTH = 2


def _identity(b: bytes) -> bytes:
    return b


def _sized(req_cls):
    """Deserializer giving (message, wire size): the size is what the budget charges (ByteSize() would
    serialize the message again)."""
    parse = req_cls.FromString

    def deserialize(raw: bytes):
        return parse(raw), len(raw)
    return deserialize


def pack_blobs(msg, field: str) -> Optional[bytes]:
    """Move the bytes fields of every element of repeated `field` that have a `<name>_ref` BlobRef
    sibling into one blob (sent through shared memory); each element keeps (offset, length)."""
    parts: list = []
    offset = 0
    for item in getattr(msg, field):
        for fd in item.DESCRIPTOR.fields:
            if fd.type != fd.TYPE_BYTES or f"{fd.name}_ref" not in item.DESCRIPTOR.fields_by_name:
                continue
            data = getattr(item, fd.name)
            if not data:
                continue
            ref = getattr(item, f"{fd.name}_ref")
            ref.offset, ref.length = offset, len(data)
            parts.append(data)
            offset += len(data)
            item.ClearField(fd.name)
    return b"".join(parts) if parts else None


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

    def _split(self, route: Route, msg) -> tuple[bytes, Optional[bytes], str]:
        frame = None
        if route.packed_field:
            frame = pack_blobs(msg, route.packed_field)
        elif route.frame_field:
            frame = getattr(msg, route.frame_field)
            if frame:
                msg.ClearField(route.frame_field)
            else:
                frame = None
        model = getattr(msg, route.model_field) if route.model_field else ""
        return msg.SerializeToString(), frame, model

    def handler(self, route: Route):
        md = method_descriptor(route.service, route.method)
        req_cls = message_class(md.input_type)
        shape = shape_of(md)
        client = self.client
        budget = self.budget
        deserialize = _sized(req_cls)

        if shape == UNARY:
            async def unary(request, context):
                request, nbytes = request
                if not budget.admit(nbytes):
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, budget.refusal(route.path, nbytes))
                try:
                    payload, frame, model = self._split(route, request)
                    return await client.unary(route.path, route.pool, payload, model=model,
                                              timeout=timeout_of(context), frame=frame)
                except BrokerError as exc:
                    await abort(context, exc)
                finally:
                    budget.release(nbytes)
            return grpc.unary_unary_rpc_method_handler(unary, deserialize, _identity)

        if shape == SERVER_STREAM:
            async def server_stream(request, context):
                request, nbytes = request
                if not budget.admit(nbytes):
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, budget.refusal(route.path, nbytes))
                try:
                    payload, frame, model = self._split(route, request)
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
                    async for msg, nbytes in request_iterator:
                        budget.charge(nbytes)
                        try:
                            payload, frame, model = self._split(route, msg)
                            await client.unary(route.path, route.pool, payload, model=model, frame=frame,
                                               timeout=timeout_of(context), stream=stream_id, extra={"end": False})
                        finally:
                            budget.release(nbytes)
                        del msg, payload, frame
                        await budget.room()  # past the budget, stop pulling: flow control pushes back
                    return await client.unary(route.path, route.pool, b"", timeout=timeout_of(context),
                                              stream=stream_id, extra={"end": True})
                except BrokerError as exc:
                    await abort(context, exc)
                finally:
                    await client.close_stream(stream_id)
            return grpc.stream_unary_rpc_method_handler(client_stream, deserialize, _identity)

        async def bidi(request_iterator, context):
            stream_id = uuid.uuid4().hex
            pending: deque = deque()      # (message, size) received, not yet sent to the worker
            outstanding: deque = deque()  # (task, size) sent, reply not yet yielded (in order)
            # bytes: size of `pending`; held: bytes this stream has charged to the budget (pending,
            # outstanding, the message in the reader's hands), all released when the stream ends
            state = {"done": False, "max_pending": DEFAULT_MAX_PENDING, "depth": DEFAULT_PIPELINE_DEPTH,
                     "clean_end": False, "sent": 0, "closed_by_client": False, "bytes": 0, "held": 0}
            wake = asyncio.Event()
            room = asyncio.Event()        # set when `pending` shrinks (drop_oldest=False backpressure)
            loop = asyncio.get_running_loop()

            def free(nbytes: int) -> None:
                state["held"] -= nbytes
                budget.release(nbytes)

            def over_stream_budget(frames: int = 0, nbytes: int = 0) -> bool:
                # pending (plus `frames` more) keeps at most max_pending frames, max(2 frames, STREAM_BYTES) bytes
                n = len(pending) + frames
                return n > state["max_pending"] or (n > 2 and state["bytes"] + nbytes > STREAM_BYTES)

            async def reader():
                try:
                    async for msg, nbytes in request_iterator:
                        state["held"] += nbytes
                        budget.charge(nbytes)
                        state["max_pending"] = max_pending_of(msg, state["max_pending"])
                        if not route.drop_oldest:
                            # never drop (audio): stop reading until the sender catches up, so gRPC
                            # flow control pushes back on the client instead
                            while pending and over_stream_budget(1, nbytes):
                                room.clear()
                                await room.wait()
                        if route.close_field and getattr(msg, route.close_field, False):
                            state["closed_by_client"] = True
                        pending.append((msg, nbytes))
                        state["bytes"] += nbytes
                        del msg
                        while len(pending) > 1 and over_stream_budget():
                            dropped = pending.popleft()[1]  # drop the OLDEST waiting frame: bounded latency
                            state["bytes"] -= dropped
                            free(dropped)
                            self.dropped_frames += 1
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

            def send(msg):
                state["sent"] += 1
                payload, frame, model = self._split(route, msg)
                return loop.create_task(client.unary(route.path, route.pool, payload, model=model, frame=frame,
                                                     timeout=timeout_of(context), stream=stream_id))

            task = loop.create_task(reader())
            try:
                while True:
                    # keep up to `depth` frames in flight so the worker never waits on the transport
                    while pending and len(outstanding) < state["depth"]:
                        msg, nbytes = pending.popleft()
                        state["bytes"] -= nbytes
                        outstanding.append((send(msg), nbytes))
                        del msg
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
