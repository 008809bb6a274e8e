"""The hf worker's loaded models: resolve, load (one at a time), find, and the LoadModel / UnloadModel handlers.

`ModelHandlers` is a mixin of workers/hf/service.py's HFService. A model loads once (concurrent callers wait
for the same load); requests name a model by any string that resolves to it (alias, folder, the
orchestrator's cache path) and share one copy. Loading picks the pipeline module of
workers/hf/pipelines/registry.py, measures the RAM / VRAM it took (workers/hf/memory.py) and reports the
load to the broker; unloading closes it and reports what came back.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from common.load_options import check_load_options, thread_budget
from common.model_resolver import LITERT_LM, TRANSFORMERS, not_transformers
from common.options import as_bool
from protos import ml_inference_pb2 as ML
from workers.base import ModelRecord
from workers.context import RequestContext, WorkerError
from workers.hf import memory
from workers.hf.pipelines import registry
from workers.hf.resolve import Resolved

KIND_USE = {"generate": "text generation / chat (ml.TransformersService/GenerateText, ChatCompletion)",
            "embed": "embeddings (ml.TransformersService/GenerateEmbeddings)",
            "speech": "speech-to-text (pythonml.v1.Speech)",
            "run": "pythonml.v1.Pipelines/Run"}
DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass
class LoadedModel:
    model_id: str
    kind: str                    # "generate" | "embed" | "speech" | "run" (registry kinds)
    resolved: Resolved
    entry: Optional[registry.Entry] = None
    handle: Any = None           # what the registry module's load() returned
    model: Any = None            # causal LM (generate)
    tokenizer: Any = None
    embedder: Any = None         # workers.hf.embeddings.Embedder (embed)
    batcher: Any = None          # workers.hf.embeddings.EmbeddingBatcher (embed)
    raw_prompt: bool = False
    tok_lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        close = getattr(self.handle, "close", None)
        if callable(close):
            close()
        self.model = self.tokenizer = self.embedder = self.batcher = self.handle = None


class ModelHandlers:
    """Mixin: loading into and finding in the worker's registry (self.models, a workers.base.ModelRegistry
    whose records carry a LoadedModel as `runtime`), and the management handlers."""

    @property
    def _loaded(self) -> dict[str, LoadedModel]:
        """model id -> LoadedModel of every loaded model (a snapshot)."""
        return {r.model_id: r.runtime for r in self.models.records()}

    def _dtype(self, name: str):
        name = (name or "auto").strip().lower()
        if name == "auto":
            return self.torch.float16 if self.device.startswith("cuda") else self.torch.float32
        if name not in DTYPES:
            raise WorkerError("INVALID_ARGUMENT", f"dtype '{name}' is not supported; use auto, float32, float16 or bfloat16")
        return getattr(self.torch, DTYPES[name])

    def _check_device(self, wanted: str) -> None:
        if self.device.startswith("cuda") and not self.torch.cuda.is_available():
            raise WorkerError("FAILED_PRECONDITION",
                              f"the hf worker for {self.device} has no usable CUDA device (torch {self.torch.__version__}, "
                              f"cuda available: no); load on device 'cpu' or start run.py with a CUDA build of torch")
        w = (wanted or "").strip().lower()
        if w in ("", "auto", self.device) or (w == "cuda" and self.device.startswith("cuda")):
            return
        raise WorkerError("FAILED_PRECONDITION", f"this request reached the hf worker on {self.device} but asks for "
                                                 f"device '{wanted}'; is there an hf worker for that device?")

    def _entry_for(self, pipeline_type: str, resolved: Resolved) -> registry.Entry:
        if (pipeline_type or "").strip():   # a generic type on a model with its own entry: that entry
            return registry.refine(registry.require(pipeline_type), resolved.path)
        return registry.detect(resolved.path, bool(resolved.gguf_file))

    @staticmethod
    def _litert_lm_entry(pipeline_type: str, resolved: Resolved) -> registry.Entry:
        """A LiteRT-LM bundle serves generation and chat only."""
        entry = registry.lookup("litert-lm")
        asked = registry.require(pipeline_type) if (pipeline_type or "").strip() else entry
        if asked.kind != "generate":
            raise not_transformers(resolved, f"{asked.name} ({KIND_USE.get(asked.kind, asked.kind)})")
        return entry

    @staticmethod
    def _is_litert_lm(lm: LoadedModel) -> bool:
        return lm.entry is not None and lm.entry.module == "litert_lm"

    # ---- loading -----------------------------------------------------------------------------------
    def _load(self, model_id: str, pipeline_type: str, opts: dict, payload: bytes,
              reuse_same: bool = False) -> tuple[ModelRecord, bool]:
        """Load once (concurrent callers wait for the same load). Returns (record, newly_loaded).

        Loads run one at a time in a worker (two concurrent from_pretrained calls in one process fail with
        "Cannot copy out of meta tensor", transformers 5.x); resolving and fetching files stay concurrent.
        reuse_same (auto-load): a copy of the same model loaded under another string is used instead."""
        check_load_options(opts, thread_budget(self.options))   # allow-list and bounds, before anything else
        self._check_device(opts.get("device", ""))
        dtype = self._dtype(opts.get("dtype", ""))
        if (pipeline_type or "").strip():
            registry.require(pipeline_type)   # UNIMPLEMENTED before any file is touched
        with self._lock:   # guards _load_locks
            lock = self._load_locks.setdefault(model_id, threading.Lock())
        with lock:
            record = self.models.get(model_id)
            if record is not None:
                return record, False
            t0 = time.time()
            resolved = self.resolver.resolve(model_id, opts)
            if resolved.family == LITERT_LM:      # a .litertlm / .task bundle: the LiteRT-LM engine
                entry = self._litert_lm_entry(pipeline_type, resolved)
            elif resolved.family != TRANSFORMERS:   # a .tflite sent to a transformers route
                raise not_transformers(resolved, "the transformers pool (GenerateText, ChatCompletion, "
                                                 "GenerateEmbeddings, Speech, Pipelines)")
            else:
                entry = self._entry_for(pipeline_type, resolved)
                if entry.module == "litert_lm":
                    raise WorkerError("FAILED_PRECONDITION", f"pipeline_type {entry.name} needs a LiteRT-LM bundle "
                                                             f"(.litertlm or .task); model '{model_id}' is a "
                                                             f"transformers model at {resolved.path}")
            kind = entry.kind
            lm = LoadedModel(model_id, kind, resolved, entry=entry, raw_prompt=as_bool(opts.get("raw_prompt"), False, "raw_prompt"))
            mod = registry.module_of(entry)
            lc = registry.LoadContext(model_id=model_id, path=resolved.path, resolved=resolved, device=self.device,
                                      dtype=dtype, opts=opts, worker_options=self.options,
                                      threads=int(self.options.get("threads") or 0), log=self.log)
            with self._load_serial:   # one load at a time: transformers' from_pretrained is not thread-safe
                if reuse_same:        # the same model under another string finished loading meanwhile
                    same = self._loaded_copy_of(resolved)
                    if same is not None:
                        return same, False
                before = memory.snapshot(self.device)
                lm.handle = mod.load(lc)
                for attr in ("model", "tokenizer", "embedder", "batcher"):
                    if hasattr(lm.handle, attr):
                        setattr(lm, attr, getattr(lm.handle, attr))
                try:
                    if hasattr(mod, "warm_up"):
                        mod.warm_up(lm.handle)
                except WorkerError:
                    lm.close()
                    raise
                except Exception as exc:
                    lm.close()
                    raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' loaded as {entry.name} but its first "
                                                             f"test pass failed: {type(exc).__name__}: {exc}") from None
                used = memory.delta(before, memory.snapshot(self.device))
                record = ModelRecord(model_id=model_id, pipeline_type=entry.name if not pipeline_type else pipeline_type,
                                     ram_mb=round(max(0.0, used.ram_mb), 1), vram_mb=round(max(0.0, used.vram_mb), 1),
                                     load_payload=payload, runtime=lm)
                self.log.info("loaded %s (%s, %s) from %s %s in %.2fs: +%.0f MB RAM, +%.0f MB VRAM", model_id, kind,
                              self.device, resolved.source, resolved.path, time.time() - t0, used.ram_mb, used.vram_mb)
                # requests find it from here on; the broker is told (replay, Stats). Under the load lock: a
                # concurrent auto-load of the same model under another string, next in line, finds this copy
                self.models.add(record)
            return record, True

    def _same_model(self, model_id: str) -> Optional[ModelRecord]:
        """A loaded model that `model_id` names under another string (the orchestrator's cache path
        `models/<org>/<repo>/model.safetensors` for a model loaded as its alias, or the other way round):
        one copy in memory, whichever string a caller uses."""
        try:
            res = self.resolver.local(model_id)
        except WorkerError:
            return None
        return self._loaded_copy_of(res) if res is not None else None

    def _loaded_copy_of(self, res: Resolved) -> Optional[ModelRecord]:
        """The loaded model at the location `res` names (the same built-in, or the same folder), if any."""
        for record in self.models.records():
            r = record.runtime.resolved
            if (res.builtin and r.builtin == res.builtin) or (not res.builtin and r.path == res.path):
                return record
        return None

    def _acquire(self, model_id: str, kind: str, pipeline_type: str = "") -> LoadedModel:
        record = self.models.get(model_id) or self._same_model(model_id)
        if record is None:
            if not self.auto_load:
                raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' is not loaded and auto-load is off: "
                                                         "call ModelManagementService/LoadModel first")
            pt = pipeline_type or {"generate": "text-generation", "embed": "feature-extraction",
                                   "speech": "automatic-speech-recognition"}.get(kind, "")
            if not pt:
                raise WorkerError("INVALID_ARGUMENT", f"model '{model_id}' is not loaded and the request names no "
                                                      f"pipeline_type; name one of {registry.names()}")
            payload = ML.LoadModelRequest(model_id=model_id, pipeline_type=pt).SerializeToString()
            record, _ = self._load(model_id, pt, {}, payload, reuse_same=True)
        lm = record.runtime
        if lm.kind != kind:
            raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' is loaded as {lm.entry.name if lm.entry else lm.kind} "
                                                     f"and cannot serve {KIND_USE.get(kind, kind)}")
        if pipeline_type and kind == "run":
            want = registry.require(pipeline_type)
            if lm.entry is not None and not registry.answers(lm.entry, want):
                raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' is loaded as {lm.entry.name}, not "
                                                         f"{want.name}; unload it or use another model id")
        return lm

    # ---- model management --------------------------------------------------------------------------
    def load_model(self, ctx: RequestContext) -> bytes:
        req = ML.LoadModelRequest.FromString(ctx.payload)
        opts = dict(req.options)
        if req.architecture and not opts.get("architecture"):
            opts["architecture"] = req.architecture
        rec, new = self._load(req.model_id, req.pipeline_type, opts, ctx.payload)
        lm = rec.runtime
        msg = (f"loaded '{req.model_id}' on {self.device} from {lm.resolved.source} ({lm.resolved.path})"
               if new else f"'{req.model_id}' was already loaded on {self.device}")
        if getattr(lm.handle, "note", ""):   # e.g. LiteRT-LM: which backend, and why not the GPU
            msg += f"; {lm.handle.note}"
        return ML.LoadModelResponse(success=True, message=msg, vram_allocated_mb=int(round(rec.vram_mb)),
                                    ram_allocated_mb=int(round(rec.ram_mb))).SerializeToString()

    def unload_model(self, ctx: RequestContext) -> bytes:
        req = ML.UnloadModelRequest.FromString(ctx.payload)
        rec = self.models.remove(req.model_id)   # requests no longer find it; the broker is told
        left = sorted(self.models)
        if rec is None:
            raise WorkerError("NOT_FOUND", f"model '{req.model_id}' is not loaded on hf@{self.device}; loaded: {left or 'none'}")
        before = memory.snapshot(self.device)
        loaded_ram = rec.ram_mb
        rec.runtime.close()   # drops the weights; a request still holding the LoadedModel sees it unloaded
        freed = memory.delta(memory.snapshot(self.device), before)
        msg = f"unloaded '{req.model_id}': freed {max(0.0, freed.ram_mb):.0f} MB RAM, {max(0.0, freed.vram_mb):.0f} MB VRAM"
        if not left and self.recycle_on_unload and freed.ram_mb < 0.5 * loaded_ram:
            self.request_recycle(f"last model unloaded but only {freed.ram_mb:.0f} of {loaded_ram:.0f} MB came back")
            msg += "; the worker process will be recycled to return the rest"
        self.log.info(msg)
        return ML.StatusResponse(success=True, message=msg).SerializeToString()
