"""Client for the orchestrator's `ml.ModelManagementService/GetModelFile` stream.

`fetch_model(address, model_id, dest, options)` pulls what a model directory needs:
config.json (required; absent = the file service does not have the model), generation config,
tokenizer files, the weights (safetensors index + every shard it names, or a single file),
sentence-transformers module configs (modules.json and each module's config / weights), and a
GGUF file when the load option gguf_file names one. Each file is reassembled by chunk offset into
a temporary file, checked (one total_size, no gap, no overlap past the end, is_last seen, bytes ==
total_size) and renamed into place. A broken stream (transport error or failed check) is retried
with back-off; NOT_FOUND is final. A `.complete` marker lets a later load reuse the directory.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Optional

import grpc

from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from workers.context import WorkerError

log = logging.getLogger("hf.files")

OPTIONAL_FILES = ["generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                  "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                  "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
                  "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"]
WEIGHT_INDEXES = ["model.safetensors.index.json", "pytorch_model.bin.index.json"]
WEIGHT_SINGLES = ["model.safetensors", "pytorch_model.bin"]
MODULE_FILES = ["config.json", "model.safetensors", "pytorch_model.bin"]


class _Missing(Exception):
    pass


class _Broken(Exception):
    pass


def _safe_rel(path: str) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not path or "\x00" in path:
        raise WorkerError("INVALID_ARGUMENT", f"file service named an unsafe path '{path}'")
    return str(p)


class FileServiceClient:
    def __init__(self, address: str, timeout_s: float = 600.0, retries: int = 3, backoff_s: float = 0.2,
                 max_message_bytes: int = 64 * 2**20):
        self.address = address
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", max_message_bytes)])
        self.stub = MLG.ModelManagementServiceStub(self.channel)
        self.bytes_fetched = 0
        self.attempts = 0

    def close(self) -> None:
        self.channel.close()

    def _fetch_once(self, model_id: str, file_path: str, dest: Path) -> int:
        tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
        total: Optional[int] = None
        ranges: list[tuple[int, int]] = []
        last_seen = False
        try:
            with open(tmp, "wb") as f:
                stream = self.stub.GetModelFile(ML.ModelFileRequest(model_id=model_id, file_path=file_path),
                                                timeout=self.timeout_s)
                for chunk in stream:
                    if total is None:
                        total = chunk.total_size
                    elif chunk.total_size != total:
                        raise _Broken(f"total_size changed from {total} to {chunk.total_size}")
                    if chunk.offset < 0 or chunk.offset + len(chunk.data) > total:
                        raise _Broken(f"chunk at {chunk.offset}+{len(chunk.data)} outside the {total}-byte file")
                    f.seek(chunk.offset)
                    f.write(chunk.data)
                    if chunk.data:
                        ranges.append((chunk.offset, chunk.offset + len(chunk.data)))
                    if chunk.is_last:
                        last_seen = True
                        break
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise _Missing(exc.details()) from None
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
                raise WorkerError("FAILED_PRECONDITION", f"file service refused {model_id}/{file_path}: {exc.details()}") from None
            raise _Broken(f"{exc.code().name}: {exc.details()}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:
            if total is None:
                raise _Broken("stream ended without any chunk")
            if not last_seen:
                raise _Broken("stream ended before the chunk marked is_last")
            covered, pos = 0, 0
            for a, b in sorted(ranges):
                if a > pos:
                    raise _Broken(f"gap in the file at bytes {pos}..{a}")
                covered += max(0, b - max(a, pos))
                pos = max(pos, b)
            if covered != total or os.path.getsize(tmp) != total:
                raise _Broken(f"received {covered} of {total} bytes")
        except _Broken:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        return total

    def fetch_file(self, model_id: str, file_path: str, dest_dir: Path, required: bool) -> bool:
        """Fetch one file into dest_dir; False when the service does not have it and it is optional."""
        rel = _safe_rel(file_path)
        dest = dest_dir / rel
        if dest.is_file():
            return True
        dest.parent.mkdir(parents=True, exist_ok=True)
        err = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                self.bytes_fetched += self._fetch_once(model_id, rel, dest)
                return True
            except _Missing as exc:
                if required:
                    raise WorkerError("NOT_FOUND", f"file service {self.address} has no '{rel}' for model '{model_id}': {exc}") from None
                return False
            except _Broken as exc:
                err = str(exc)
                log.warning("GetModelFile %s/%s attempt %d failed: %s", model_id, rel, attempt + 1, err)
                time.sleep(self.backoff_s * (2 ** attempt))
        raise WorkerError("UNAVAILABLE", f"could not fetch '{rel}' of model '{model_id}' from file service "
                                         f"{self.address} after {self.retries + 1} attempts: {err}")


def _weights(client: FileServiceClient, model_id: str, d: Path, prefix: str = "") -> bool:
    for index in WEIGHT_INDEXES:
        if client.fetch_file(model_id, prefix + index, d, required=False):
            try:
                weight_map = json.loads((d / prefix / index).read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}': {index} is not a valid weight index: {exc}") from None
            for shard in sorted(set(weight_map.values())):
                client.fetch_file(model_id, prefix + shard, d, required=True)
            return True
    return any(client.fetch_file(model_id, prefix + w, d, required=False) for w in WEIGHT_SINGLES)


def fetch_model(address: str, model_id: str, dest: Path, options: Optional[dict] = None) -> Optional[Path]:
    """Fetch a model directory from the file service into `dest`; None when the service lacks the model."""
    options = options or {}
    dest = Path(dest)
    if (dest / ".complete").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    # timeout and retries are operator settings (--model-file-timeout-s, --model-file-retries), passed in
    # by the resolver from the worker's options; a request cannot set them (common.load_options)
    client = FileServiceClient(address, timeout_s=float(options.get("file_timeout_s") or 600),
                               retries=int(options.get("file_retries") or 3))
    t0 = time.time()
    try:
        gguf = options.get("gguf_file") or ""
        if gguf:
            if not client.fetch_file(model_id, gguf, dest, required=False):
                return None
            for name in ("tokenizer.json", "tokenizer_config.json"):
                client.fetch_file(model_id, name, dest, required=False)
        else:
            if not client.fetch_file(model_id, "config.json", dest, required=False):
                if not client.fetch_file(model_id, "modules.json", dest, required=False):
                    return None
            for name in OPTIONAL_FILES:
                client.fetch_file(model_id, name, dest, required=False)
            if not _weights(client, model_id, dest):
                raise WorkerError("NOT_FOUND", f"file service {address} has model '{model_id}' but no weights "
                                  f"({', '.join(WEIGHT_INDEXES + WEIGHT_SINGLES)})")
            modules = dest / "modules.json"
            if modules.is_file():
                for mod in json.loads(modules.read_text()):
                    sub = (mod.get("path") or "").strip("/")
                    if not sub:
                        continue
                    _safe_rel(sub)
                    for name in MODULE_FILES:
                        client.fetch_file(model_id, f"{sub}/{name}", dest, required=False)
        (dest / ".complete").write_text(f"{model_id} from {address}\n")
        log.info("fetched model %s from %s: %.1f MB in %.1fs (%d requests)", model_id, address,
                 client.bytes_fetched / 2**20, time.time() - t0, client.attempts)
        return dest
    except BaseException:
        if not (dest / ".complete").is_file():
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        client.close()
