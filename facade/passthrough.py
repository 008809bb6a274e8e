"""gRPC handlers that forward a method to a worker pool, for every streaming shape.

Requests are parsed once (to move frame bytes into shared memory and read the model name); worker
replies are already-serialized response messages and go back to the client untouched (identity
serializer). Bidi streams keep at most `max_pending` frames waiting and drop the oldest beyond that,
so a slow model never builds unbounded latency; drops are counted. Routes with drop_oldest=False
(audio) never drop: the reader stops pulling messages instead (gRPC flow control = backpressure).
Routes with packed_field move several bytes fields of a repeated message into one shm blob.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import Optional

import grpc

from facade.broker_client import BrokerClient
from facade.errors import BrokerError
from facade.routes import CLIENT_STREAM, SERVER_STREAM, UNARY, Route, message_class, method_descriptor, shape_of

log = logging.getLogger("facade")

DEFAULT_MAX_PENDING = 2
DEFAULT_PIPELINE_DEPTH = 2


def _identity(b: bytes) -> bytes:
    return b


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


def timeout_of(context) -> Optional[float]:
    t = context.time_remaining()
    return t if t is not None and t < 1e8 else None


async def abort(context, exc: BrokerError):
    await context.abort(exc.status, exc.message)


class PassThrough:
    def __init__(self, client: BrokerClient):
        self.client = client
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

        if shape == UNARY:
            async def unary(request, context):
                payload, frame, model = self._split(route, request)
                try:
                    return await client.unary(route.path, route.pool, payload, model=model,
                                              timeout=timeout_of(context), frame=frame)
                except BrokerError as exc:
                    await abort(context, exc)
            return grpc.unary_unary_rpc_method_handler(unary, req_cls.FromString, _identity)

        if shape == SERVER_STREAM:
            async def server_stream(request, context):
                payload, frame, model = self._split(route, request)
                try:
                    async for part in client.stream(route.path, route.pool, payload, model=model,
                                                    timeout=timeout_of(context), frame=frame):
                        yield part
                except BrokerError as exc:
                    await abort(context, exc)
            return grpc.unary_stream_rpc_method_handler(server_stream, req_cls.FromString, _identity)

        if shape == CLIENT_STREAM:
            async def client_stream(request_iterator, context):
                stream_id = uuid.uuid4().hex
                try:
                    async for msg in request_iterator:
                        payload, frame, model = self._split(route, msg)
                        await client.unary(route.path, route.pool, payload, model=model, frame=frame,
                                           timeout=timeout_of(context), stream=stream_id, extra={"end": False})
                    return await client.unary(route.path, route.pool, b"", timeout=timeout_of(context),
                                              stream=stream_id, extra={"end": True})
                except BrokerError as exc:
                    await abort(context, exc)
                finally:
                    await client.close_stream(stream_id)
            return grpc.stream_unary_rpc_method_handler(client_stream, req_cls.FromString, _identity)

        async def bidi(request_iterator, context):
            stream_id = uuid.uuid4().hex
            pending: deque = deque()      # received, not yet sent to the worker
            outstanding: deque = deque()  # sent, reply not yet yielded (in order)
            state = {"done": False, "max_pending": DEFAULT_MAX_PENDING, "depth": DEFAULT_PIPELINE_DEPTH,
                     "clean_end": False, "sent": 0, "closed_by_client": False}
            wake = asyncio.Event()
            room = asyncio.Event()        # set when `pending` shrinks (drop_oldest=False backpressure)
            loop = asyncio.get_running_loop()

            async def reader():
                try:
                    async for msg in request_iterator:
                        meta = getattr(msg, "metadata", None)
                        if meta is not None and "max_pending" in meta:
                            try:
                                state["max_pending"] = max(1, min(64, int(meta["max_pending"])))
                            except ValueError:
                                pass
                        if not route.drop_oldest:
                            # never drop (audio): stop reading until the sender catches up, so gRPC
                            # flow control pushes back on the client instead
                            while len(pending) >= state["max_pending"]:
                                room.clear()
                                await room.wait()
                        if route.close_field and getattr(msg, route.close_field, False):
                            state["closed_by_client"] = True
                        pending.append(msg)
                        while len(pending) > state["max_pending"]:
                            pending.popleft()  # drop the OLDEST waiting frame: bounded latency
                            self.dropped_frames += 1
                        wake.set()
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
                        outstanding.append(send(pending.popleft()))
                        room.set()
                    if outstanding:
                        head = outstanding[0]
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
                for t in outstanding:
                    t.cancel()
                if outstanding:
                    await asyncio.gather(*outstanding, return_exceptions=True)
                await client.close_stream(stream_id)
        return grpc.stream_stream_rpc_method_handler(bidi, req_cls.FromString, _identity)
