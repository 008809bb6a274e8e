"""Where a LiteRT model's bytes come from.

`resolve(model_id, options, frame, worker_options)` tries, in order:
1. ``options["content"] == "frame"``: bytes uploaded with the request (KServe RepositoryModelLoad
   ``file:...`` parameter, carried in the request's frame);
2. ``options["path"]``: a .tflite file inside the model folders;
3. ``options["alias"]`` or the model id itself as a built-in alias (common/litert_catalogue.py);
4. the model id as a local path (absolute, or relative to one of the worker's ``model_dirs`` or ./models,
   with or without ``.tflite``, or ``<dir>/<id>/model.tflite``);
5. the operator's file service (``--model-file-service``), file ``options["file_path"]`` (default
   ``model.tflite``, or the id's basename when the id ends with .tflite).
Every local path goes through common.model_access: inside the model folders, regular files only (no
/proc, /dev, FIFOs), size checked on the open file; outside, one refusal that says nothing of the file.
Bytes are checked for the .tflite flatbuffer identifier ("TFL3") before LiteRT sees them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from common import litert_catalogue
from common.model_access import ModelRoots, cwd_models_dir, read_regular_file, working_dir
from workers.context import WorkerError
from workers.litert.file_client import MAX_MODEL_BYTES, fetch_model_file, fetch_to_cache

TFLITE_IDENTIFIER = b"TFL3"


@dataclass
class ModelBytes:
    content: bytes
    source: str              # human-readable origin, e.g. "alias face_detection_short_range (/.../x.tflite)"
    path: str = ""           # local path when there is one (lets a replay after a restart re-read it)


def check_tflite(content: bytes, model_id: str, source: str, show_head: bool = False) -> None:
    if len(content) < 8 or content[4:8] != TFLITE_IDENTIFIER:
        # the first bytes are shown for uploaded bytes only: for a local file they would leak its content
        head = (content[:8].hex() if content else "empty") if show_head else "something else"
        raise WorkerError("INVALID_ARGUMENT",
                          f"model '{model_id}' ({source}) is not a .tflite flatbuffer: expected the identifier "
                          f"'TFL3' at bytes 4..8, got {head} ({len(content)} bytes)")


def check_no_parent_segments(value: str, model_id: str, what: str) -> None:
    """A model id or path must not climb out of the model folders ('..' segments): INVALID_ARGUMENT."""
    if ".." in value.replace("\\", "/").split("/"):
        raise WorkerError("INVALID_ARGUMENT",
                          f"model '{model_id}': {what} '{value[:200]}' contains a '..' segment; name a built-in "
                          f"alias, a file inside a --model-dir, or an absolute path")


def _read(path: str, model_id: str, source: str, roots: ModelRoots) -> ModelBytes:
    """A regular file inside the model folders (common.model_access), at most 2 GiB."""
    data, real = read_regular_file(path, roots, MAX_MODEL_BYTES, "file", model_id)
    return ModelBytes(data, f"{source} {path}", real)


def _local_candidates(model_id: str, model_dirs) -> list:
    names = [model_id] if model_id.endswith(".tflite") else [model_id, model_id + ".tflite",
                                                             os.path.join(model_id, "model.tflite")]
    out = []
    if os.path.isabs(model_id):
        out.extend(n for n in names if os.path.isabs(n))
    else:
        for d in list(model_dirs or []) + [cwd_models_dir()]:
            out.extend(os.path.join(d, n) for n in names)
        if model_id.endswith(".tflite") or os.sep in model_id:
            out.append(os.path.join(working_dir(), model_id))  # relative to the working directory (inside a model folder only)
    return out


def resolve(model_id: str, options: dict, frame: Optional[bytes], worker_options: dict) -> ModelBytes:
    opts = {k: v for k, v in (options or {}).items()}
    roots = ModelRoots.from_options(worker_options)
    if opts.get("content") == "frame":
        if frame is None:
            raise WorkerError("INVALID_ARGUMENT", f"model '{model_id}': content=frame but no bytes were attached")
        if len(frame) > MAX_MODEL_BYTES:
            raise WorkerError("RESOURCE_EXHAUSTED", f"model '{model_id}': {len(frame)} uploaded bytes; .tflite files "
                                                    f"are limited to {MAX_MODEL_BYTES} bytes")
        mb = ModelBytes(bytes(frame), f"{len(frame)} uploaded bytes")
    elif opts.get("path"):
        mb = _read(opts["path"], model_id, "file", roots)
    else:
        check_no_parent_segments(model_id, model_id, "the model id")
        alias = opts.get("alias") or model_id
        path = litert_catalogue.resolve(alias)
        if path is not None:
            mb = _read(path, model_id, f"built-in alias {alias}:", roots)
        else:
            mb = None
            cands = _local_candidates(model_id, worker_options.get("model_dirs"))
            if os.path.isabs(model_id) and not any(roots.inside(c) for c in cands):
                raise roots.refusal(model_id, "the model id", model_id)   # says nothing of what lies outside
            for cand in cands:
                if roots.inside(cand) and os.path.isfile(cand):
                    mb = _read(cand, model_id, "file", roots)
                    break
            if mb is None:
                # the file service is an operator setting (--model-file-service), never a request option
                service = worker_options.get("model_file_service") or ""
                if service:
                    file_path = opts.get("file_path") or (os.path.basename(model_id)
                                                          if model_id.endswith(".tflite") else "model.tflite")
                    where = f"file service {service}: {model_id}/{file_path}"
                    cache = worker_options.get("cache_dir") or ""
                    timeout = float(worker_options.get("file_timeout_s") or 300)
                    if cache:
                        data, local = fetch_to_cache(service, model_id, file_path, cache, timeout_s=timeout)
                        mb = ModelBytes(data, where, local)
                    else:
                        mb = ModelBytes(fetch_model_file(service, model_id, file_path, timeout=timeout), where)
                else:
                    tried = ", ".join(c for c in cands if roots.inside(c)) or "no local path"
                    raise WorkerError(
                        "NOT_FOUND",
                        f"LiteRT model '{model_id}' not found: not a built-in alias (e.g. "
                        f"{', '.join(litert_catalogue.short_names()[:6])}, ...), not a file in the model folders ({tried}), "
                        f"and no model file service is configured; pass options alias=NAME or path=FILE inside a "
                        f"--model-dir, or start the service with --model-file-service")
    check_tflite(mb.content, model_id, mb.source, show_head=opts.get("content") == "frame")
    return mb
