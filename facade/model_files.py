"""GetModelFile served by this service, for the models it can resolve locally.

`serve_model_file(request, context, resolver)` is an async generator of ModelFileChunk for
`ml.ModelManagementService/GetModelFile`: built-in aliases and local model directories
(common.model_resolver.LocalResolver.local — no conversion, no fetching, no torch import; a model id reaches
only the model folders of common.model_access, an absolute id elsewhere is refused), so other
hosts and tests can pull models from this service. The requested path must be a plain relative
path that stays inside the model's directory after resolving symlinks (HF cache snapshots may
point into the repo's blobs folder, which is the boundary then); anything else is refused.
Files are read in a thread so the event loop never blocks on disk. Each chunk message stays within the
client's message limit (--max-response-mb): `chunk_size(limit)` = min(1 MiB, limit minus the chunk's
own fields).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path, PurePosixPath

import grpc

from common.status import StatusError
from protos import ml_inference_pb2 as ML

CHUNK_BYTES = 1 << 20
# a ModelFileChunk's fields besides `data`: tags, the length of data, offset and total_size as varints
# (at most 10 bytes each), is_last. 26 bytes at most; rounded up
CHUNK_OVERHEAD = 64


def chunk_size(max_message_bytes: int = 0) -> int:
    """Data bytes per chunk so that a whole ModelFileChunk is at most `max_message_bytes` (0 = no limit)."""
    if max_message_bytes <= 0:
        return CHUNK_BYTES
    return max(1, min(CHUNK_BYTES, max_message_bytes - CHUNK_OVERHEAD))


def _check_rel(file_path: str) -> str:
    """A safe relative path or an error message."""
    if not file_path:
        return "file_path is empty: name a file such as 'config.json'"
    if "\x00" in file_path or "\\" in file_path or len(file_path) > 1024:
        return f"file_path '{file_path[:80]}' holds characters that are not allowed"
    p = PurePosixPath(file_path)
    if p.is_absolute() or ".." in p.parts:
        return f"file_path '{file_path}' leaves the model's directory: give a path relative to it, without '..'"
    return ""


def _read(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


async def serve_model_file(request, context, resolver, chunk_bytes: int = CHUNK_BYTES):
    """Async generator of ModelFileChunk; aborts with NOT_FOUND / INVALID_ARGUMENT / PERMISSION_DENIED."""
    err = _check_rel(request.file_path)
    if err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, err)
    try:
        res = resolver.local(request.model_id)
    except StatusError as exc:  # an invalid id, or an absolute path outside the model folders
        await context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INVALID_ARGUMENT), exc.message)
    if res is None:
        await context.abort(grpc.StatusCode.NOT_FOUND,
                            f"model '{request.model_id}' is not available locally on this service "
                            f"(built-in aliases and model dirs {resolver.model_dirs or '[]'})")
    base = res.path if res.path.is_dir() else res.path.parent   # a model file stands for its folder
    target = base / request.file_path
    root = os.path.realpath(res.serve_root)
    real = os.path.realpath(target)
    if real != root and not real.startswith(root + os.sep):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"file_path '{request.file_path}' resolves outside the model's directory: refused")
    if not os.path.isfile(real):
        await context.abort(grpc.StatusCode.NOT_FOUND,
                            f"model '{request.model_id}' has no file '{request.file_path}'")
    total = os.path.getsize(real)
    offset = 0
    while True:
        data = await asyncio.to_thread(_read, Path(real), offset, chunk_bytes)
        last = offset + len(data) >= total or not data
        yield ML.ModelFileChunk(data=data, offset=offset, total_size=total, is_last=last)
        offset += len(data)
        if last:
            return


def make_model_file_server(model_dirs: list, cwd_models: bool = True, max_message_bytes: int = 0):
    """The `fn(request, context)` async generator facade/server.py plugs into GetModelFile; each chunk
    message is at most `max_message_bytes` (0: chunks of 1 MiB)."""
    chunk = chunk_size(max_message_bytes)
    from common.model_resolver import LocalResolver
    resolver = LocalResolver(model_dirs=model_dirs, cwd_models=cwd_models)

    def serve(request, context):
        return serve_model_file(request, context, resolver, chunk)
    return serve
