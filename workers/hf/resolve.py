"""The hf worker's model resolver: common.model_resolver's steps, plus what only a worker does.

The order and the rules live in common/model_resolver.py (one resolver for every RPC): exact alias →
org/repo inside the string matched against the built-in models → a local file or folder inside the model
folders → the operator's file service (options["model_file_service"], i.e. --model-file-service; never a
request option), fetched into options["cache_dir"] by workers/hf/file_client.py → NOT_FOUND listing what
was tried. This module adds the worker's part: the one-time GGUF → safetensors conversion of the built-in
SmolLM2 (cached persistently, so later loads take < 1 s) and the fetch from the file service.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

from common.model_resolver import (BUILTIN_NAMES, MAX_MODEL_ID, MINILM_IDS, SMOLLM2_GGUF, SMOLLM2_IDS,  # noqa: F401
                                   WHISPER_TINY_EN_IDS, LocalResolver, Resolved, is_model_dir, minilm_dir,
                                   missing_extra, persistent_cache_root, repo_id_of, smollm2_converted_dir,
                                   smollm2_gguf_path, validate_model_id, whisper_tiny_en_dir)
from workers.context import WorkerError


class ModelResolver(LocalResolver):
    """Resolves model ids for the HF worker: local steps of common.model_resolver, conversion, file service."""

    def __init__(self, model_dirs=(), cache_dir: str = "", file_service: str = "",
                 fetcher: Optional[Callable] = None, converter: Optional[Callable] = None,
                 file_timeout_s: float = 600.0, file_retries: int = 3, cwd_models: bool = True):
        super().__init__(model_dirs, cache_dir, cwd_models=cwd_models)
        self.file_service = file_service or ""
        self.file_timeout_s = float(file_timeout_s or 600.0)
        self.file_retries = int(file_retries if file_retries is not None else 3)
        self._fetcher = fetcher        # (address, model_id, dest_dir, options) -> Path
        self._converter = converter    # (gguf_path, out_dir) -> None

    @classmethod
    def from_options(cls, options: dict, **kw) -> "ModelResolver":
        return cls(model_dirs=options.get("model_dirs") or [], cache_dir=options.get("cache_dir") or "",
                   file_service=options.get("model_file_service") or "",
                   file_timeout_s=float(options.get("file_timeout_s") or 600.0),
                   file_retries=int(options.get("file_retries") if options.get("file_retries") is not None else 3),
                   cwd_models=options.get("cwd_models", True) is not False, **kw)

    # ---- full resolution (may convert or fetch) ----------------------------------------------------
    def resolve(self, model_id: str, load_options: Optional[dict] = None) -> Resolved:
        load_options = load_options or {}
        validate_model_id(model_id)
        file_service = self.file_service   # operator setting only (common.load_options refuses the option)
        res = self.builtin(model_id)
        if res is not None and res.gguf_file and res.builtin == "smollm2":
            res = self._convert_smollm2(model_id, res)
        if res is None:
            res = self.local_dir(model_id)
        if res is None and file_service:
            if self._fetcher is None:
                from workers.hf.file_client import fetch_model
                self._fetcher = fetch_model
            if not self.cache_dir:
                raise WorkerError("FAILED_PRECONDITION", "no cache_dir configured for files fetched from the file service")
            remote_id = repo_id_of(model_id)   # models/<org>/<repo>/<file> -> <org>/<repo>
            dest = Path(self.cache_dir) / "files" / re.sub(r"[^A-Za-z0-9._-]", "_", remote_id)
            fetch_opts = {"gguf_file": load_options.get("gguf_file") or "",
                          "file_timeout_s": self.file_timeout_s, "file_retries": self.file_retries}
            path = self._fetcher(file_service, remote_id, dest, fetch_opts)
            if path is not None:
                res = Resolved(model_id, Path(path), "file-service", Path(path),
                               gguf_file=load_options.get("gguf_file") or None)
        if res is None:
            raise missing_extra(model_id) or WorkerError("NOT_FOUND", f"model '{model_id}' not found: "
                                                                      f"{self.where_looked(file_service)}")
        if res.gguf_file is None and load_options.get("gguf_file"):
            res.gguf_file = load_options["gguf_file"]
        return res

    def _convert_smollm2(self, model_id: str, res: Resolved) -> Resolved:
        gguf = res.path / res.gguf_file
        out = smollm2_converted_dir(gguf, self.cache_dir)
        if self._converter is None:
            from workers.hf.gguf_convert import convert_gguf_once
            self._converter = convert_gguf_once
        self._converter(gguf, out)
        return Resolved(model_id, out, "builtin", out, builtin=res.builtin)
