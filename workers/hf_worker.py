"""HuggingFace worker: streaming text generation, chat, embeddings and model management on one device.

Handlers (see docs/ARCHITECTURE.md for the handler API):
- ml.TransformersService/GenerateText     stream of TextResponse, one per decoded piece
- ml.TransformersService/ChatCompletion   stream of ChatResponse, model's chat template, finish_reason
- ml.TransformersService/GenerateEmbeddings  dynamic batching across concurrent requests
- ml.ModelManagementService/LoadModel|UnloadModel  measured RAM / VRAM deltas

Models resolve through workers/hf/resolve.py (built-in alias, local dir, orchestrator file service)
and load on first use when options["auto_load"] is true. HF offline mode is forced before
transformers is imported: nothing here ever reaches a hub.

Worker options used (run.py passes them in --options-json): auto_load, model_dirs, cache_dir,
model_file_service, threads, plus optional hf_capacity (default 32), gen_concurrency (4),
default_generation_model, default_embedding_model, default_max_new_tokens (256),
chat_max_new_tokens (512), max_prompt_chars (262144), max_embed_texts (2048), embed_max_batch (32),
embed_max_wait_ms (5), recycle_on_unload (true).
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from protos import ml_inference_pb2 as ML
from workers.base import ModelRecord, Worker, run_worker_main
from workers.context import Cancelled, RequestContext, WorkerError
from workers.hf import chat as chatmod
from workers.hf import memory
from workers.hf.resolve import ModelResolver, Resolved

GEN_TYPES = {"text-generation", "chat", "conversational", "causal-lm", "text-generation-inference"}
EMB_TYPES = {"feature-extraction", "sentence-similarity", "embeddings", "embedding", "sentence-transformers"}
DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
M = "ml.TransformersService/"
MM = "ml.ModelManagementService/"


def _truthy(v: Any, default: bool) -> bool:
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "on")


@dataclass
class LoadedModel:
    model_id: str
    kind: str                    # "generate" | "embed"
    resolved: Resolved
    model: Any = None            # causal LM (generate)
    tokenizer: Any = None
    embedder: Any = None         # workers.hf.embeddings.Embedder (embed)
    batcher: Any = None          # workers.hf.embeddings.EmbeddingBatcher (embed)
    raw_prompt: bool = False
    record: Optional[ModelRecord] = None
    tok_lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.model = self.tokenizer = self.embedder = self.batcher = None


class HFWorker(Worker):
    pool = "hf"
    capacity = 32   # embeddings batch across concurrent requests; generation has its own limit

    # ---- lifecycle ---------------------------------------------------------------------------------
    def setup(self) -> None:
        import torch
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        o = self.options
        threads = int(o.get("threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass
        self.torch = torch
        self.capacity = int(o.get("hf_capacity") or self.capacity)
        self.auto_load = _truthy(o.get("auto_load"), True)
        self.default_gen_model = o.get("default_generation_model") or "SmolLM2-135M-Instruct"
        self.default_emb_model = o.get("default_embedding_model") or "all-MiniLM-L6-v2"
        self.default_max_new = int(o.get("default_max_new_tokens") or 256)
        self.chat_max_new = int(o.get("chat_max_new_tokens") or 512)
        self.max_prompt_chars = int(o.get("max_prompt_chars") or 262144)
        self.max_embed_texts = int(o.get("max_embed_texts") or 2048)
        self.embed_max_batch = int(o.get("embed_max_batch") or 32)
        self.embed_max_wait_s = float(o.get("embed_max_wait_ms") or 5) / 1000.0
        self.recycle_on_unload = _truthy(o.get("recycle_on_unload"), True)
        self.gen_slots = threading.BoundedSemaphore(max(1, int(o.get("gen_concurrency") or 4)))
        self.resolver = ModelResolver.from_options(o)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

    def handlers(self) -> dict:
        return {M + "GenerateText": self.generate_text,
                M + "ChatCompletion": self.chat_completion,
                M + "GenerateEmbeddings": self.generate_embeddings,
                MM + "LoadModel": self.load_model,
                MM + "UnloadModel": self.unload_model}

    # ---- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _stopper(ctx: RequestContext):
        def should_stop() -> Optional[str]:
            if ctx.cancelled.is_set():
                return "cancelled"
            d = ctx.deadline
            if d is not None and time.time() > d:
                return "deadline"
            return None
        return should_stop

    @staticmethod
    def _raise_for(reason: str, ctx: RequestContext, done: int = 0):
        if reason == "cancelled":
            raise Cancelled()
        raise WorkerError("DEADLINE_EXCEEDED", f"{ctx.method}: deadline passed after {done} generated tokens; "
                                               "raise the deadline or lower max_length")

    def _dtype(self, name: str):
        name = (name or "auto").strip().lower()
        if name == "auto":
            return self.torch.float16 if self.device.startswith("cuda") else self.torch.float32
        if name not in DTYPES:
            raise WorkerError("INVALID_ARGUMENT", f"dtype '{name}' is not supported; use auto, float32, float16 or bfloat16")
        return getattr(self.torch, DTYPES[name])

    def _check_device(self, wanted: str) -> None:
        w = (wanted or "").strip().lower()
        if w in ("", "auto", self.device) or (w == "cuda" and self.device.startswith("cuda")):
            return
        raise WorkerError("FAILED_PRECONDITION", f"this request reached the hf worker on {self.device} but asks for "
                                                 f"device '{wanted}'; is there an hf worker for that device?")

    def _kind_for(self, pipeline_type: str, resolved: Resolved) -> str:
        pt = (pipeline_type or "").strip().lower()
        if pt in GEN_TYPES:
            return "generate"
        if pt in EMB_TYPES:
            return "embed"
        if pt:
            raise WorkerError("UNIMPLEMENTED", f"pipeline_type '{pipeline_type}' is not served by the hf worker; use one of "
                                               f"{sorted(GEN_TYPES | EMB_TYPES)}")
        p = resolved.path
        if (p / "modules.json").is_file():
            return "embed"
        if resolved.gguf_file:
            return "generate"
        try:
            archs = json.loads((p / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError):
            archs = []
        return "generate" if any("CausalLM" in a or "LMHead" in a for a in archs) else "embed"

    # ---- loading -----------------------------------------------------------------------------------
    def _load(self, model_id: str, pipeline_type: str, opts: dict, payload: bytes) -> tuple[LoadedModel, bool]:
        """Load once (concurrent callers wait for the same load). Returns (model, newly_loaded)."""
        self._check_device(opts.get("device", ""))
        dtype = self._dtype(opts.get("dtype", ""))
        pt = (pipeline_type or "").strip().lower()
        if pt and pt not in GEN_TYPES | EMB_TYPES:
            raise WorkerError("UNIMPLEMENTED", f"pipeline_type '{pipeline_type}' is not served by the hf worker; use one of "
                                               f"{sorted(GEN_TYPES | EMB_TYPES)}")
        with self._lock:
            lock = self._load_locks.setdefault(model_id, threading.Lock())
        with lock:
            with self._lock:
                lm = self._loaded.get(model_id)
            if lm is not None:
                return lm, False
            t0 = time.time()
            resolved = self.resolver.resolve(model_id, opts)
            kind = self._kind_for(pipeline_type, resolved)
            before = memory.snapshot(self.device)
            lm = LoadedModel(model_id, kind, resolved, raw_prompt=_truthy(opts.get("raw_prompt"), False))
            if kind == "generate":
                self._load_causal(lm, dtype)
            else:
                self._load_embedder(lm, dtype, opts)
            self._warm_up(lm)
            used = memory.delta(before, memory.snapshot(self.device))
            lm.record = ModelRecord(model_id=model_id, pipeline_type=pipeline_type or
                                    ("text-generation" if kind == "generate" else "feature-extraction"),
                                    ram_mb=round(max(0.0, used.ram_mb), 1), vram_mb=round(max(0.0, used.vram_mb), 1),
                                    load_payload=payload)
            with self._lock:
                self._loaded[model_id] = lm
            self.log.info("loaded %s (%s, %s) from %s %s in %.2fs: +%.0f MB RAM, +%.0f MB VRAM", model_id, kind,
                          self.device, resolved.source, resolved.path, time.time() - t0, used.ram_mb, used.vram_mb)
            self.note_loaded(lm.record)
            return lm, True

    def _load_causal(self, lm: LoadedModel, dtype) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        path = lm.resolved.path
        if lm.resolved.gguf_file:   # a GGUF from a local dir or the file service: convert once, then load
            from workers.hf.gguf_convert import convert_gguf_once
            root = Path(self.options.get("cache_dir") or path)
            path = convert_gguf_once(path / lm.resolved.gguf_file, root / "converted" / Path(lm.resolved.gguf_file).stem)
        try:
            lm.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise WorkerError("FAILED_PRECONDITION", f"model '{lm.model_id}' at {path} could not be loaded as a "
                                                     f"causal language model: {exc}") from None
        lm.model = model.to(self.device).eval()

    def _load_embedder(self, lm: LoadedModel, dtype, opts: dict) -> None:
        from workers.hf.embeddings import Embedder, EmbeddingBatcher
        norm = opts.get("normalize")
        normalize = None if norm in (None, "", "auto") else _truthy(norm, True)
        try:
            lm.embedder = Embedder(str(lm.resolved.path), self.device, dtype if dtype != self.torch.float32 else None,
                                   normalize, int(opts.get("max_seq_length") or 0))
        except (OSError, ValueError) as exc:
            raise WorkerError("FAILED_PRECONDITION", f"model '{lm.model_id}' at {lm.resolved.path} could not be "
                                                     f"loaded as an embedding model: {exc}") from None
        lm.tokenizer = lm.embedder.tokenizer
        lm.batcher = EmbeddingBatcher(lm.embedder.encode, int(opts.get("max_batch") or self.embed_max_batch),
                                      float(opts.get("max_wait_ms") or self.embed_max_wait_s * 1000) / 1000.0,
                                      name=lm.model_id)

    def _warm_up(self, lm: LoadedModel) -> None:
        """One tiny forward pass: touches every weight (mmap-backed safetensors count in RSS only once
        read, so the measured delta is the real cost) and fails the load, not the first request."""
        if lm.kind == "generate":
            with self.torch.inference_mode():
                lm.model(input_ids=self.torch.tensor([[lm.tokenizer.bos_token_id or 0]], device=self.device))
        else:
            lm.embedder.encode(["warm up"])

    def _acquire(self, model_id: str, kind: str) -> LoadedModel:
        with self._lock:
            lm = self._loaded.get(model_id)
        if lm is None:
            if not self.auto_load:
                raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' is not loaded and auto-load is off: "
                                                         "call ModelManagementService/LoadModel first")
            pt = "text-generation" if kind == "generate" else "feature-extraction"
            payload = ML.LoadModelRequest(model_id=model_id, pipeline_type=pt).SerializeToString()
            lm, _ = self._load(model_id, pt, {}, payload)
        if lm.kind != kind:
            what = "text generation / chat" if kind == "generate" else "embeddings"
            raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' is loaded as a {lm.kind} model and cannot "
                                                     f"serve {what}")
        return lm

    # ---- generation --------------------------------------------------------------------------------
    def _check_prompt(self, prompt: str, what: str = "prompt") -> None:
        if not prompt or not prompt.strip():
            raise WorkerError("INVALID_ARGUMENT", f"{what} is empty: send the text to continue")
        if len(prompt) > self.max_prompt_chars:
            raise WorkerError("INVALID_ARGUMENT", f"{what} is {len(prompt)} characters; the limit is "
                                                  f"{self.max_prompt_chars} (worker option max_prompt_chars)")

    def _stream(self, ctx: RequestContext, lm: LoadedModel, prompt_ids: list[int], params):
        from workers.hf.generation import stream_generate
        should_stop = self._stopper(ctx)
        while not self.gen_slots.acquire(timeout=0.05):
            reason = should_stop()
            if reason:
                yield from ()
                self._raise_for(reason, ctx)
        try:
            yield from stream_generate(lm.model, lm.tokenizer, prompt_ids, params, should_stop, self.device)
        finally:
            self.gen_slots.release()

    def generate_text(self, ctx: RequestContext) -> bytes:
        from workers.hf.generation import validate_params
        req = ML.TextRequest.FromString(ctx.payload)
        self._check_prompt(req.prompt)
        params = validate_params(req.max_length, req.temperature, req.top_p, self.default_max_new)
        lm = self._acquire(req.model or self.default_gen_model, "generate")
        with lm.tok_lock:
            ids = chatmod.text_prompt_ids(lm.tokenizer, req.prompt, lm.raw_prompt)
        n = 0
        for piece in self._stream(ctx, lm, ids, params):
            n = piece.tokens
            if piece.finish_reason is None:
                ctx.send_partial(ML.TextResponse(text=piece.text, tokens_generated=n).SerializeToString())
                continue
            if piece.finish_reason in ("cancelled", "deadline"):
                self._raise_for(piece.finish_reason, ctx, n)
            return ML.TextResponse(text=piece.text, done=True, tokens_generated=n).SerializeToString()
        return ML.TextResponse(done=True, tokens_generated=n).SerializeToString()

    def chat_completion(self, ctx: RequestContext) -> bytes:
        from workers.hf.generation import validate_params
        req = ML.ChatRequest.FromString(ctx.payload)
        messages = chatmod.validate_messages(req.messages, self.max_prompt_chars)
        params = validate_params(0, req.temperature, 0.0, self.chat_max_new)
        lm = self._acquire(req.model or self.default_gen_model, "generate")
        with lm.tok_lock:
            ids = chatmod.chat_prompt_ids(lm.tokenizer, messages)
        for piece in self._stream(ctx, lm, ids, params):
            if piece.finish_reason is None:
                ctx.send_partial(ML.ChatResponse(content=piece.text).SerializeToString())
                continue
            if piece.finish_reason == "deadline":
                self._raise_for("deadline", ctx, piece.tokens)
            return ML.ChatResponse(content=piece.text, done=True, finish_reason=piece.finish_reason).SerializeToString()
        return ML.ChatResponse(done=True, finish_reason="stop").SerializeToString()

    # ---- embeddings --------------------------------------------------------------------------------
    def generate_embeddings(self, ctx: RequestContext) -> bytes:
        from workers.hf.embeddings import Stopped
        req = ML.GenerateEmbeddingsRequest.FromString(ctx.payload)
        texts = list(req.texts)
        if not texts:
            raise WorkerError("INVALID_ARGUMENT", "texts is empty: send at least one text to embed")
        if len(texts) > self.max_embed_texts:
            raise WorkerError("INVALID_ARGUMENT", f"{len(texts)} texts in one request; the limit is {self.max_embed_texts} "
                                                  "(split the request)")
        for i, t in enumerate(texts):
            if len(t) > self.max_prompt_chars:
                raise WorkerError("INVALID_ARGUMENT", f"texts[{i}] is {len(t)} characters; the limit is {self.max_prompt_chars}")
        lm = self._acquire(req.model or self.default_emb_model, "embed")
        batcher = lm.batcher
        if batcher is None:
            raise WorkerError("UNAVAILABLE", f"model '{lm.model_id}' was unloaded while this request waited; retry")
        try:
            vecs = batcher.embed(texts, self._stopper(ctx))
        except Stopped as exc:
            self._raise_for(exc.reason, ctx)
        except RuntimeError as exc:
            if "unloaded" in str(exc):
                raise WorkerError("UNAVAILABLE", f"model '{lm.model_id}' was unloaded while this request waited; retry") from None
            raise
        resp = ML.GeneratedEmbeddingsResponse()
        for v in vecs:
            resp.embeddings.add().values.extend(v.tolist())
        return resp.SerializeToString()

    # ---- model management --------------------------------------------------------------------------
    def load_model(self, ctx: RequestContext) -> bytes:
        req = ML.LoadModelRequest.FromString(ctx.payload)
        opts = dict(req.options)
        if req.architecture and not opts.get("architecture"):
            opts["architecture"] = req.architecture
        lm, new = self._load(req.model_id, req.pipeline_type, opts, ctx.payload)
        rec = lm.record
        msg = (f"loaded '{req.model_id}' on {self.device} from {lm.resolved.source} ({lm.resolved.path})"
               if new else f"'{req.model_id}' was already loaded on {self.device}")
        return ML.LoadModelResponse(success=True, message=msg, vram_allocated_mb=int(round(rec.vram_mb)),
                                    ram_allocated_mb=int(round(rec.ram_mb))).SerializeToString()

    def unload_model(self, ctx: RequestContext) -> bytes:
        req = ML.UnloadModelRequest.FromString(ctx.payload)
        with self._lock:
            lm = self._loaded.pop(req.model_id, None)
            left = sorted(self._loaded)
        if lm is None:
            raise WorkerError("NOT_FOUND", f"model '{req.model_id}' is not loaded on hf@{self.device}; loaded: {left or 'none'}")
        before = memory.snapshot(self.device)
        loaded_ram = lm.record.ram_mb if lm.record else 0.0
        lm.close()
        del lm
        freed = memory.delta(memory.snapshot(self.device), before)
        self.note_unloaded(req.model_id)
        msg = f"unloaded '{req.model_id}': freed {freed.ram_mb:.0f} MB RAM, {freed.vram_mb:.0f} MB VRAM"
        if not left and self.recycle_on_unload and freed.ram_mb < 0.5 * loaded_ram:
            self.request_recycle(f"last model unloaded but only {freed.ram_mb:.0f} of {loaded_ram:.0f} MB came back")
            msg += "; the worker process will be recycled to return the rest"
        self.log.info(msg)
        return ML.StatusResponse(success=True, message=msg).SerializeToString()


if __name__ == "__main__":
    run_worker_main(HFWorker)
