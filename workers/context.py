"""Per-request context handed to worker handlers, and the error type handlers raise.

A handler is `fn(ctx: RequestContext) -> bytes | None`; see docs/ARCHITECTURE.md. The bytes the facade
moved beside the request (common/payload.py) are read through one accessor, `ctx.side`.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from common.payload import Side
from common.status import StatusError as WorkerError  # one error class for every layer


class Cancelled(WorkerError):
    def __init__(self, message: str = "request cancelled by the client"):
        super().__init__("CANCELLED", message)


@dataclass
class RequestContext:
    request_id: str
    method: str
    payload: bytes = b""
    header: dict = field(default_factory=dict)
    frames: list = field(default_factory=list)
    stream_state: Optional[dict] = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # set by the worker base: sends one PARTIAL reply (bytes payload)
    _send_partial: Optional[Callable[[bytes], None]] = None
    # set by the worker base: zero-copy view of this request's shared-memory frame, or None
    _frame_view: Optional[Callable[[], Optional[memoryview]]] = None
    _side: Optional[Side] = None
    # set by the worker base for a stream handler with a prepare stage: a finished Future of prepare(ctx)
    prepared: Optional[Future] = None

    @property
    def model(self) -> str:
        return self.header.get("model") or ""

    @property
    def device(self) -> str:
        return self.header.get("device") or ""

    @property
    def stream_id(self) -> Optional[str]:
        return self.header.get("stream")

    @property
    def deadline(self) -> Optional[float]:
        return self.header.get("deadline")

    def time_left(self) -> Optional[float]:
        d = self.deadline
        return None if d is None else d - time.time()

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        d = self.deadline
        if d is not None and time.time() > d:
            raise WorkerError("DEADLINE_EXCEEDED", f"{self.method}: deadline passed while the worker was processing")

    def send_partial(self, payload: bytes) -> None:
        if self._send_partial is None:
            raise RuntimeError("send_partial is only available inside a worker")
        self._send_partial(payload)

    def frame_bytes(self) -> Optional[memoryview]:
        """Zero-copy view of the frame/image bytes the facade placed in shared memory (None if none)."""
        if self._frame_view is not None:
            return self._frame_view()
        raw = self.header.get("_inline_frame")
        return memoryview(raw) if raw is not None else None

    @property
    def side(self) -> Side:
        """The request's side buffer by shape: `side.field(msg, name)` (the shm frame, else the message's own
        field), `side.ref(element, name, where)` (a BlobRef slice), `side.pieces(msg, name, where)` (KServe raw)."""
        if self._side is None:
            self._side = Side(self.frame_bytes, self.header)
        return self._side

    def frame_array(self) -> Optional[np.ndarray]:
        mv = self.frame_bytes()
        return None if mv is None else np.frombuffer(mv, dtype=np.uint8)


def make_test_context(method: str, payload: bytes = b"", frame: Optional[bytes] = None,
                      stream_state: Optional[dict] = None, **header: Any) -> tuple[RequestContext, list]:
    """A context for unit tests of handlers: returns (ctx, partials) where partials collects send_partial."""
    partials: list = []
    hdr = dict(header)
    if frame is not None:
        hdr["_inline_frame"] = frame
    ctx = RequestContext(request_id="test", method=method, payload=payload, header=hdr,
                         stream_state=stream_state, _send_partial=partials.append)
    return ctx, partials
