"""Fetch one model file from the orchestrator's file service (ml.ModelManagementService/GetModelFile).

The orchestrator owns downloads; it streams a file as chunks (data, offset, total_size, is_last).
The service address and its timeout are operator settings (``--model-file-service``,
``--model-file-timeout-s``), never request options. With a cache folder, the hf pool's client (workers/hf/file_client.py: offset
reassembly, retries with back-off, the file kept on disk for the next load or a replay) does the work;
without one, a small in-memory reader checks chunk order and completeness.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Tuple

from workers.context import WorkerError

MAX_MODEL_BYTES = 2 * 2**30 - 1  # a .tflite flatbuffer cannot exceed 2 GiB


def fetch_to_cache(address: str, model_id: str, file_path: str, cache_dir: str,
                   timeout_s: float = 300.0) -> Tuple[bytes, str]:
    """(bytes, local path) of the file, fetched into `cache_dir` with the shared hf file-service client."""
    from pathlib import Path

    from workers.hf.file_client import FileServiceClient
    dest_dir = Path(cache_dir) / "litert-files" / re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    client = FileServiceClient(address, timeout_s=timeout_s)
    try:
        client.fetch_file(model_id, file_path, dest_dir, required=True)
    finally:
        client.close()
    path = os.path.join(str(dest_dir), file_path)
    with open(path, "rb") as f:
        return f.read(), path


def fetch_model_file(address: str, model_id: str, file_path: str, timeout: Optional[float] = 300.0,
                     max_bytes: int = MAX_MODEL_BYTES) -> bytes:
    """Bytes of `file_path` of `model_id` from the GetModelFile stream at `address` (host:port)."""
    import grpc

    from protos import ml_inference_pb2 as ML
    from protos import ml_inference_pb2_grpc as MLG

    where = f"model file service {address}"
    options = [("grpc.max_receive_message_length", 64 * 2**20)]
    buf = bytearray()
    total = None
    try:
        with grpc.insecure_channel(address, options=options) as channel:
            stub = MLG.ModelManagementServiceStub(channel)
            stream = stub.GetModelFile(ML.ModelFileRequest(model_id=model_id, file_path=file_path),
                                       timeout=timeout)
            done = False
            for chunk in stream:
                if chunk.offset != len(buf):
                    raise WorkerError("DATA_LOSS", f"{where}: chunk of {model_id}/{file_path} at offset "
                                                   f"{chunk.offset}, expected {len(buf)}")
                if chunk.total_size:
                    total = chunk.total_size
                    if total > max_bytes:
                        raise WorkerError("RESOURCE_EXHAUSTED", f"{where}: {model_id}/{file_path} is {total} "
                                                                f"bytes, above the {max_bytes}-byte limit")
                buf += chunk.data
                if len(buf) > max_bytes:
                    raise WorkerError("RESOURCE_EXHAUSTED", f"{where}: {model_id}/{file_path} exceeds "
                                                            f"{max_bytes} bytes")
                if chunk.is_last:
                    done = True
                    break
    except grpc.RpcError as exc:
        code = exc.code()
        name = code.name if code is not None else "UNAVAILABLE"
        if name not in ("NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT"):
            name = "UNAVAILABLE"
        raise WorkerError(name, f"{where} could not serve {model_id}/{file_path}: {exc.details() or code}") from None
    if not done:
        raise WorkerError("DATA_LOSS", f"{where}: stream for {model_id}/{file_path} ended without is_last "
                                       f"after {len(buf)} bytes")
    if total is not None and total != len(buf):
        raise WorkerError("DATA_LOSS", f"{where}: {model_id}/{file_path} announced {total} bytes, got {len(buf)}")
    return bytes(buf)
