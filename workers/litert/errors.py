"""Translate LiteRT failures into WorkerError(code, message) that a person can act on.

- an unresolved custom op (e.g. mediapipe's face_landmark_with_attention.tflite needs
  ``Landmarks2TransformMatrix``) -> FAILED_PRECONDITION naming the op;
- bytes that are not a .tflite flatbuffer -> INVALID_ARGUMENT;
- anything else the runtime refuses at load -> FAILED_PRECONDITION with the runtime's text;
- a failure while running a loaded model -> INTERNAL with the runtime's text.
"""
from __future__ import annotations

import re

from workers.context import WorkerError

_CUSTOM_OP_PATTERNS = (
    re.compile(r"unresolved custom op:\s*([A-Za-z0-9_.\-/]+?)\.?\s*(?:\n|$|See)", re.I),
    re.compile(r"Didn't find custom op for name '([^']+)'", re.I),
    re.compile(r"Node number \d+ \(([^)]+)\) failed to prepare", re.I),
)


def custom_op_name(text: str) -> str | None:
    """The custom op named in a LiteRT error text, or None."""
    if "custom op" not in text.lower():
        return None
    for pattern in _CUSTOM_OP_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).rstrip(".")
    return None


def _first_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return " ".join(lines[:n])


def load_error(model_id: str, source: str, exc: BaseException) -> WorkerError:
    """WorkerError for a model that LiteRT refused to build or prepare."""
    if isinstance(exc, WorkerError):
        return exc
    text = str(exc)
    op = custom_op_name(text)
    if op:
        return WorkerError(
            "FAILED_PRECONDITION",
            f"model '{model_id}' ({source}) uses the custom op '{op}', which this LiteRT runtime does not "
            f"provide (only builtin ops are registered); use a model converted with builtin ops only, "
            f"or one that does not need '{op}'")
    low = text.lower()
    if "flatbuffer" in low or "model identifier" in low or "could not parse" in low or "verify" in low:
        return WorkerError("INVALID_ARGUMENT",
                           f"model '{model_id}' ({source}) is not a valid .tflite flatbuffer: {_first_lines(text)}")
    return WorkerError("FAILED_PRECONDITION",
                       f"LiteRT could not prepare model '{model_id}' ({source}): {type(exc).__name__}: "
                       f"{_first_lines(text)}")


def invoke_error(model_id: str, exc: BaseException) -> WorkerError:
    """WorkerError for a failure while resizing/allocating/invoking a loaded model."""
    if isinstance(exc, WorkerError):
        return exc
    text = _first_lines(str(exc), 4)
    if "resize" in text.lower() or "dimension" in text.lower() or "shape" in text.lower():
        return WorkerError("INVALID_ARGUMENT", f"model '{model_id}' rejected the input shapes: {text}")
    return WorkerError("INTERNAL", f"model '{model_id}' failed while running: {type(exc).__name__}: {text}")
