"""HuggingFace worker: streaming text generation, chat, embeddings and model management on one device.

Handlers (see docs/ARCHITECTURE.md for the handler API):
- ml.TransformersService/GenerateText     stream of TextResponse, one per decoded piece
- ml.TransformersService/ChatCompletion   stream of ChatResponse, model's chat template, finish_reason
- ml.TransformersService/GenerateEmbeddings  dynamic batching across concurrent requests
- ml.ModelManagementService/LoadModel|UnloadModel  measured RAM / VRAM deltas

Models resolve through workers/hf/resolve.py (built-in alias, local dir, orchestrator file service)
and load on first use when options["auto_load"] is true. A LiteRT-LM bundle (`.litertlm` / `.task`, e.g. the
built-in SmolLM2-135M-Instruct-litertlm) serves GenerateText and ChatCompletion through its own engine
(workers/hf/pipelines/litert_lm.py), with the same limits, generation slots and cancel checks.
HF offline mode is forced before
transformers is imported: nothing here ever reaches a hub.

Every count, size and duration of a request is bounded before parsing / tokenising / running it:
the limits, their defaults and the worker options that change them are in workers/hf/limits.py.
A cancelled or expired request stops within one generated token, one embedding sub-batch or one
transcribed segment, and is answered only once its work has stopped (the broker counts it in flight
until then, so Stats tells the truth).

Worker options used (run.py passes them in --options-json): auto_load, model_dirs, cache_dir,
model_file_service, threads, plus optional hf_capacity (default 32), gen_concurrency (4),
default_generation_model, default_embedding_model, default_max_new_tokens (256), warm_imports (true: import the
default generation model's transformers code before READY, workers/hf/warm.py),
chat_max_new_tokens (512), embed_max_batch (32), embed_max_wait_ms (5), recycle_on_unload (true),
and the limit options of workers/hf/limits.py.
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from common.load_options import check_load_options, thread_budget
from protos import ml_inference_pb2 as ML
from workers.base import ModelRecord, Worker, run_worker_main
from workers.context import Cancelled, RequestContext, WorkerError
from workers.hf import chat as chatmod
from workers.hf import limits
from workers.hf import memory
from workers.hf.pipelines import registry
from common.model_resolver import LITERT_LM, TRANSFORMERS, not_transformers
from workers.hf.resolve import ModelResolver, Resolved

GEN_TYPES = {"text-generation", "chat", "conversational", "causal-lm", "text-generation-inference"}
EMB_TYPES = {"feature-extraction", "sentence-similarity", "embeddings", "embedding", "sentence-transformers"}
KIND_USE = {"generate": "text generation / chat (ml.TransformersService/GenerateText, ChatCompletion)",
            "embed": "embeddings (ml.TransformersService/GenerateEmbeddings)",
            "speech": "speech-to-text (pythonml.v1.Speech)",
            "run": "pythonml.v1.Pipelines/Run"}
DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
M = "ml.TransformersService/"
MM = "ml.ModelManagementService/"
SP = "pythonml.v1.Speech/"
PL = "pythonml.v1.Pipelines/"


def _truthy(v: Any, default: bool) -> bool:
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "yes", "on")


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
    record: Optional[ModelRecord] = None
    tok_lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        close = getattr(self.handle, "close", None)
        if callable(close):
            close()
        self.model = self.tokenizer = self.embedder = self.batcher = self.handle = None


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
        self.default_speech_model = o.get("default_speech_model") or "whisper-tiny.en"
        self.max_audio_s = float(o.get("max_audio_s") or limits.AUDIO_MAX_SECONDS)
        self.max_pipeline_inputs = int(o.get("max_pipeline_inputs") or 256)
        self.default_max_new = int(o.get("default_max_new_tokens") or 256)
        self.chat_max_new = int(o.get("chat_max_new_tokens") or 512)
        self.max_prompt_chars = int(o.get("max_prompt_chars") or limits.PROMPT_MAX_CHARS)
        self.chat_max_messages = int(o.get("chat_max_messages") or limits.CHAT_MAX_MESSAGES)
        self.chat_max_chars = int(o.get("chat_max_chars") or limits.CHAT_MAX_TOTAL_CHARS)
        self.max_embed_texts = int(o.get("max_embed_texts") or limits.EMBED_MAX_TEXTS)
        self.embed_max_text_chars = int(o.get("embed_max_text_chars") or limits.EMBED_MAX_TEXT_CHARS)
        self.embed_max_total_chars = int(o.get("embed_max_total_chars") or limits.EMBED_MAX_TOTAL_CHARS)
        self.embed_max_batch = int(o.get("embed_max_batch") or limits.EMBED_BATCH_TEXTS)
        self.embed_max_wait_s = float(o.get("embed_max_wait_ms") or 5) / 1000.0
        self.recycle_on_unload = _truthy(o.get("recycle_on_unload"), True)
        self.gen_slots = threading.BoundedSemaphore(max(1, int(o.get("gen_concurrency") or 4)))
        self.resolver = ModelResolver.from_options(o)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._load_serial = threading.Lock()
        if _truthy(o.get("warm_imports"), True):   # ~1.6 s here instead of inside the first GenerateText
            from workers.hf.warm import warm_generation_imports
            warm_generation_imports(self.resolver, self.default_gen_model, self.log)

    def handlers(self) -> dict:
        return {M + "GenerateText": self.generate_text,
                M + "ChatCompletion": self.chat_completion,
                M + "GenerateEmbeddings": self.generate_embeddings,
                MM + "LoadModel": self.load_model,
                MM + "UnloadModel": self.unload_model,
                SP + "Transcribe": self.transcribe,
                SP + "StreamTranscribe": self.stream_transcribe,
                PL + "Run": self.run_pipeline,
                PL + "RunStream": self.run_pipeline_stream}

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
    def _raise_for(reason: str, ctx: RequestContext, done: int = 0,
                   what: str = "generated tokens; raise the deadline or lower max_length"):
        if reason == "cancelled":
            raise Cancelled()
        raise WorkerError("DEADLINE_EXCEEDED", f"{ctx.method}: deadline passed after {done} {what}")

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
              reuse_same: bool = False) -> tuple[LoadedModel, bool]:
        """Load once (concurrent callers wait for the same load). Returns (model, newly_loaded).

        Loads run one at a time in a worker (two concurrent from_pretrained calls in one process fail with
        "Cannot copy out of meta tensor", transformers 5.x); resolving and fetching files stay concurrent.
        reuse_same (auto-load): a copy of the same model loaded under another string is used instead."""
        check_load_options(opts, thread_budget(self.options))   # allow-list and bounds, before anything else
        self._check_device(opts.get("device", ""))
        dtype = self._dtype(opts.get("dtype", ""))
        if (pipeline_type or "").strip():
            registry.require(pipeline_type)   # UNIMPLEMENTED before any file is touched
        with self._lock:
            lock = self._load_locks.setdefault(model_id, threading.Lock())
        with lock:
            with self._lock:
                lm = self._loaded.get(model_id)
            if lm is not None:
                return lm, False
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
            lm = LoadedModel(model_id, kind, resolved, entry=entry, raw_prompt=_truthy(opts.get("raw_prompt"), False))
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
            lm.record = ModelRecord(model_id=model_id, pipeline_type=entry.name if not pipeline_type else pipeline_type,
                                    ram_mb=round(max(0.0, used.ram_mb), 1), vram_mb=round(max(0.0, used.vram_mb), 1),
                                    load_payload=payload)
            with self._lock:
                self._loaded[model_id] = lm
            self.log.info("loaded %s (%s, %s) from %s %s in %.2fs: +%.0f MB RAM, +%.0f MB VRAM", model_id, kind,
                          self.device, resolved.source, resolved.path, time.time() - t0, used.ram_mb, used.vram_mb)
            self.note_loaded(lm.record)
            return lm, True

    def _same_model(self, model_id: str) -> Optional[LoadedModel]:
        """A loaded model that `model_id` names under another string (the orchestrator's cache path
        `models/<org>/<repo>/model.safetensors` for a model loaded as its alias, or the other way round):
        one copy in memory, whichever string a caller uses."""
        try:
            res = self.resolver.local(model_id)
        except WorkerError:
            return None
        return self._loaded_copy_of(res) if res is not None else None

    def _loaded_copy_of(self, res: Resolved) -> Optional[LoadedModel]:
        """The loaded model at the location `res` names (the same built-in, or the same folder), if any."""
        with self._lock:
            for lm in self._loaded.values():
                r = lm.resolved
                if (res.builtin and r.builtin == res.builtin) or (not res.builtin and r.path == res.path):
                    return lm
        return None

    def _acquire(self, model_id: str, kind: str, pipeline_type: str = "") -> LoadedModel:
        with self._lock:
            lm = self._loaded.get(model_id)
        if lm is None:
            lm = self._same_model(model_id)
        if lm is None:
            if not self.auto_load:
                raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' is not loaded and auto-load is off: "
                                                         "call ModelManagementService/LoadModel first")
            pt = pipeline_type or {"generate": "text-generation", "embed": "feature-extraction",
                                   "speech": "automatic-speech-recognition"}.get(kind, "")
            if not pt:
                raise WorkerError("INVALID_ARGUMENT", f"model '{model_id}' is not loaded and the request names no "
                                                      f"pipeline_type; name one of {registry.names()}")
            payload = ML.LoadModelRequest(model_id=model_id, pipeline_type=pt).SerializeToString()
            lm, _ = self._load(model_id, pt, {}, payload, reuse_same=True)
        if lm.kind != kind:
            raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' is loaded as {lm.entry.name if lm.entry else lm.kind} "
                                                     f"and cannot serve {KIND_USE.get(kind, kind)}")
        if pipeline_type and kind == "run":
            want = registry.require(pipeline_type)
            if lm.entry is not None and not registry.answers(lm.entry, want):
                raise WorkerError("FAILED_PRECONDITION", f"model '{model_id}' is loaded as {lm.entry.name}, not "
                                                         f"{want.name}; unload it or use another model id")
        return lm

    # ---- generation --------------------------------------------------------------------------------
    def _check_prompt(self, prompt: str, what: str = "prompt") -> None:
        if not prompt or not prompt.strip():
            raise WorkerError("INVALID_ARGUMENT", f"{what} is empty: send the text to continue")
        limits.check_chars(len(prompt), self.max_prompt_chars, what, "max_prompt_chars",
                           "shorten it or summarise earlier turns")

    def _prompt_ids(self, lm: LoadedModel, messages: list[dict], raw_text: Optional[str] = None) -> list[int]:
        """Render (chat template unless raw) and tokenise, tokenising a bounded prefix first when the text
        is far longer than the model's context (generation.encode_within_context)."""
        from workers.hf.generation import context_limit, encode_within_context
        tok = lm.tokenizer
        with lm.tok_lock:
            if raw_text is not None:
                text, templated = raw_text, False
            else:
                text, templated = chatmod.render(tok, messages), chatmod.has_template(tok)
            return encode_within_context(lambda t: chatmod.encode(tok, t, templated), text, context_limit(lm.model))

    def _in_generation_slot(self, ctx: RequestContext, run):
        """Pieces of `run(should_stop)` once a generation slot is free (waiting stays cancellable)."""
        should_stop = self._stopper(ctx)
        while not self.gen_slots.acquire(timeout=0.05):
            reason = should_stop()
            if reason:
                yield from ()
                self._raise_for(reason, ctx)
        try:
            yield from run(should_stop)
        finally:
            self.gen_slots.release()

    def _stream(self, ctx: RequestContext, lm: LoadedModel, prompt_ids: list[int], params):
        from workers.hf.generation import stream_generate
        return self._in_generation_slot(ctx, lambda should_stop: stream_generate(
            lm.model, lm.tokenizer, prompt_ids, params, should_stop, self.device))

    def _litert_stream(self, ctx: RequestContext, lm: LoadedModel, messages: list[dict], raw_text: Optional[str],
                       params):
        """_stream for a LiteRT-LM engine: the same generation slots and cancel checks."""
        from workers.hf.pipelines import litert_lm
        return self._in_generation_slot(ctx, lambda should_stop: litert_lm.stream(
            lm.handle, messages, raw_text, params.max_new_tokens, params.temperature, params.top_p, params.top_k,
            should_stop))

    def generate_text(self, ctx: RequestContext) -> bytes:
        from workers.hf.generation import validate_params
        limits.check_payload(ctx.payload, limits.max_request_bytes(self.max_prompt_chars), "GenerateText",
                             f"prompt of {self.max_prompt_chars} characters")
        req = ML.TextRequest.FromString(ctx.payload)
        self._check_prompt(req.prompt)
        params = validate_params(req.max_length, req.temperature, req.top_p, self.default_max_new, req.top_k)
        lm = self._acquire(req.model or self.default_gen_model, "generate")
        turn = [{"role": "user", "content": req.prompt}]
        if self._is_litert_lm(lm):
            pieces = self._litert_stream(ctx, lm, turn, req.prompt if lm.raw_prompt else None, params)
        else:
            raw = lm.raw_prompt or not chatmod.has_template(lm.tokenizer)
            pieces = self._stream(ctx, lm, self._prompt_ids(lm, turn, req.prompt if raw else None), params)
        n = 0
        for piece in pieces:
            n = piece.tokens
            if piece.finish_reason is None:
                ctx.send_partial(ML.TextResponse(text=piece.text, tokens_generated=n).SerializeToString())
                continue
            if piece.finish_reason in ("cancelled", "deadline"):
                self._raise_for(piece.finish_reason, ctx, n)
            return ML.TextResponse(text=piece.text, done=True, tokens_generated=n).SerializeToString()
        return ML.TextResponse(done=True, tokens_generated=n).SerializeToString()

    def _check_chat(self, payload: bytes) -> "ML.ChatRequest":
        """Bounds first: request bytes, then message count, then total characters; then the messages."""
        limits.check_payload(payload, limits.max_request_bytes(self.chat_max_chars, self.chat_max_messages),
                             "ChatCompletion", f"{self.chat_max_messages} messages, {self.chat_max_chars} characters")
        req = ML.ChatRequest.FromString(payload)
        limits.check_count(len(req.messages), self.chat_max_messages, "ChatCompletion: messages", "chat_max_messages",
                           "keep the most recent turns or summarise the earlier ones")
        limits.check_chars(sum(len(m.content) for m in req.messages), self.chat_max_chars,
                           "ChatCompletion: the messages together", "chat_max_chars",
                           "keep the most recent turns or summarise the earlier ones")
        return req

    def chat_completion(self, ctx: RequestContext) -> bytes:
        from workers.hf.generation import validate_params
        req = self._check_chat(ctx.payload)
        messages = chatmod.validate_messages(req.messages, self.chat_max_chars)
        params = validate_params(req.max_length, req.temperature, req.top_p, self.chat_max_new, req.top_k)
        lm = self._acquire(req.model or self.default_gen_model, "generate")
        if self._is_litert_lm(lm):
            pieces = self._litert_stream(ctx, lm, messages, None, params)
        else:
            pieces = self._stream(ctx, lm, self._prompt_ids(lm, messages), params)
        for piece in pieces:
            if piece.finish_reason is None:
                ctx.send_partial(ML.ChatResponse(content=piece.text, tokens_generated=piece.tokens).SerializeToString())
                continue
            if piece.finish_reason in ("cancelled", "deadline"):
                self._raise_for(piece.finish_reason, ctx, piece.tokens)
            return ML.ChatResponse(content=piece.text, done=True, finish_reason=piece.finish_reason,
                                   tokens_generated=piece.tokens).SerializeToString()
        return ML.ChatResponse(done=True, finish_reason="stop").SerializeToString()

    # ---- embeddings --------------------------------------------------------------------------------
    def _check_embed(self, payload: bytes) -> "ML.GenerateEmbeddingsRequest":
        """Bounds first: request bytes, then the number of texts, then each text's and all texts' length."""
        limits.check_payload(payload, limits.max_request_bytes(self.embed_max_total_chars, self.max_embed_texts),
                             "GenerateEmbeddings", f"{self.max_embed_texts} texts, {self.embed_max_total_chars} characters")
        req = ML.GenerateEmbeddingsRequest.FromString(payload)
        texts = req.texts
        if not texts:
            raise WorkerError("INVALID_ARGUMENT", "texts is empty: send at least one text to embed")
        limits.check_count(len(texts), self.max_embed_texts, "GenerateEmbeddings: texts", "max_embed_texts",
                           "split the texts over several requests")
        total = 0
        for i, t in enumerate(texts):
            limits.check_chars(len(t), self.embed_max_text_chars, f"GenerateEmbeddings: texts[{i}]",
                               "embed_max_text_chars", "split it into passages (the model reads only its start)")
            total += len(t)
        limits.check_chars(total, self.embed_max_total_chars, "GenerateEmbeddings: the texts together",
                           "embed_max_total_chars", "split the texts over several requests")
        return req

    def generate_embeddings(self, ctx: RequestContext) -> bytes:
        from workers.hf.embeddings import Stopped
        req = self._check_embed(ctx.payload)
        texts = list(req.texts)
        lm = self._acquire(req.model or self.default_emb_model, "embed")
        batcher = lm.batcher
        if batcher is None:
            raise WorkerError("UNAVAILABLE", f"model '{lm.model_id}' was unloaded while this request waited; retry")
        try:
            vecs = batcher.embed(texts, self._stopper(ctx))
        except Stopped as exc:
            self._raise_for(exc.reason, ctx, exc.done, f"of {len(texts)} texts were embedded; raise the deadline "
                                                       "or send fewer texts per request")
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
        if getattr(lm.handle, "note", ""):   # e.g. LiteRT-LM: which backend, and why not the GPU
            msg += f"; {lm.handle.note}"
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
        msg = f"unloaded '{req.model_id}': freed {max(0.0, freed.ram_mb):.0f} MB RAM, {max(0.0, freed.vram_mb):.0f} MB VRAM"
        if not left and self.recycle_on_unload and freed.ram_mb < 0.5 * loaded_ram:
            self.request_recycle(f"last model unloaded but only {freed.ram_mb:.0f} of {loaded_ram:.0f} MB came back")
            msg += "; the worker process will be recycled to return the rest"
        self.log.info(msg)
        return ML.StatusResponse(success=True, message=msg).SerializeToString()

    # ---- speech ------------------------------------------------------------------------------------
    @staticmethod
    def _segment_msgs(out, segs) -> None:
        for sg in segs:
            out.add(start_s=round(sg.start, 3), end_s=round(sg.end, 3), text=sg.text.strip(),
                    avg_logprob=sg.avg_logprob, no_speech_prob=sg.no_speech_prob)

    def transcribe(self, ctx: RequestContext) -> bytes:
        from protos import pythonml_pb2 as X
        from workers.hf import audio as A
        from workers.hf.pipelines import speech
        req = X.TranscribeRequest.FromString(ctx.payload)
        task = speech.check_task(req.task)
        data = ctx.frame_bytes()
        if data is None:
            data = req.audio
        samples = A.decode(data, req.encoding, req.sample_rate, req.channels, where="Transcribe: audio",
                           max_seconds=self.max_audio_s)
        opts = dict(req.options)
        lm = self._acquire(req.model or self.default_speech_model, "speech")
        beam = speech.check_beam(req.beam_size or opts.get("beam_size") or 1)
        t0 = time.perf_counter()
        res = lm.handle.transcribe(samples, req.language, task, beam, opts, speech.stopper(ctx))
        resp = X.TranscribeResponse(text=res.text, language=res.language or "",
                                    language_probability=res.language_probability,
                                    duration_s=len(samples) / speech.RATE, processing_s=time.perf_counter() - t0,
                                    model=lm.model_id, backend=lm.handle.backend)
        self._segment_msgs(resp.segments, res.segments)
        return resp.SerializeToString()

    def stream_transcribe(self, ctx: RequestContext) -> bytes:
        from protos import pythonml_pb2 as X
        from workers.hf import audio as A
        from workers.hf.pipelines import speech
        chunk = X.AudioChunk.FromString(ctx.payload)
        state = ctx.stream_state if ctx.stream_state is not None else {}
        st = state.get("speech")
        if st is None:
            st = speech.StreamState.start(chunk.model or self.default_speech_model, chunk, 1)
            state["speech"] = st
            state["speech_opts"] = dict(chunk.metadata)
        else:
            st.check_chunk(chunk)
        index = st.chunks
        data = ctx.frame_bytes()
        if data is None:
            data = chunk.pcm
        samples = A.decode(data, st.encoding, st.sample_rate, st.channels, where=f"StreamTranscribe chunk {index}",
                           allow_empty=True, max_seconds=self.max_audio_s)
        if (st.received + samples.size) / speech.RATE > self.max_audio_s:
            raise WorkerError("INVALID_ARGUMENT", f"StreamTranscribe: the stream passed {self.max_audio_s:.0f} s of "
                                                  "audio (worker option max_audio_s); open a new stream")
        lm = self._acquire(st.model_id, "speech")
        final, finals, partial, dt = speech.stream_step(lm.handle, st, samples, chunk.end, "transcribe",
                                                        state.get("speech_opts") or {}, speech.stopper(ctx))
        up = X.TranscriptUpdate(is_final=final, chunk_index=index, audio_received_s=st.received / speech.RATE,
                                processing_s=dt, language=st.detected_language or st.language)
        if final:
            up.text = " ".join(sg.text.strip() for sg in finals)
            self._segment_msgs(up.segments, finals)
            up.partial_text = " ".join(sg.text.strip() for sg in partial)
        else:
            up.text = " ".join(sg.text.strip() for sg in partial)
            self._segment_msgs(up.segments, partial)
        return up.SerializeToString()

    # ---- generic pipelines -------------------------------------------------------------------------
    def _pipeline_inputs(self, ctx: RequestContext, req) -> list:
        blob = ctx.frame_bytes()
        out = []
        if len(req.inputs) > self.max_pipeline_inputs:
            raise WorkerError("INVALID_ARGUMENT", f"{len(req.inputs)} inputs in one request; the limit is "
                                                  f"{self.max_pipeline_inputs} (worker option max_pipeline_inputs)")

        def bytes_of(i: int, inline: bytes, ref, has_ref: bool):
            if inline:
                return inline
            if not has_ref:
                return None
            if blob is None:
                raise WorkerError("INVALID_ARGUMENT", f"inputs[{i}]: refers to shared memory but none was sent")
            if ref.offset < 0 or ref.length < 0 or ref.offset + ref.length > len(blob):
                raise WorkerError("INVALID_ARGUMENT", f"inputs[{i}]: blob reference {ref.offset}+{ref.length} is "
                                                      f"outside the {len(blob)}-byte shared-memory frame")
            return blob[ref.offset:ref.offset + ref.length]

        for i, inp in enumerate(req.inputs):
            image = bytes_of(i, inp.image, inp.image_ref, inp.HasField("image_ref"))
            audio = bytes_of(i, inp.audio, inp.audio_ref, inp.HasField("audio_ref"))
            kinds = [k for k, v in (("text", inp.text), ("image", image), ("audio", audio)) if v]
            if len(kinds) != 1:
                raise WorkerError("INVALID_ARGUMENT", f"inputs[{i}]: set exactly one of text, image, audio "
                                                      f"(got {kinds or 'none'})")
            if len(inp.text) > self.max_prompt_chars:
                raise WorkerError("INVALID_ARGUMENT", f"inputs[{i}]: text is {len(inp.text)} characters; the limit "
                                                      f"is {self.max_prompt_chars}")
            out.append(registry.Input(index=i, kind=kinds[0], text=inp.text, data=image if image else audio,
                                      encoding=inp.encoding, sample_rate=inp.sample_rate, role=inp.role))
        return out

    def run_pipeline_stream(self, ctx: RequestContext) -> bytes:
        """Pipelines/RunStream: Run, with generated text sent piece by piece (PipelineResponse.delta) before
        the last message (done, the complete outputs)."""
        return self.run_pipeline(ctx, stream=True)

    def run_pipeline(self, ctx: RequestContext, stream: bool = False) -> bytes:
        from protos import pythonml_pb2 as X
        req = X.PipelineRequest.FromString(ctx.payload)
        if not req.model.strip():
            raise WorkerError("INVALID_ARGUMENT", "Pipelines/Run: model is empty: name a model id or a local path")
        if req.pipeline_type.strip():
            registry.require(req.pipeline_type)
        inputs = self._pipeline_inputs(ctx, req)
        lm = self._acquire(req.model, "run", req.pipeline_type)
        emit = None
        if stream:
            def emit(index: int, text: str) -> None:
                ctx.send_partial(X.PipelineResponse(model=lm.model_id, pipeline_type=lm.entry.name, delta=text,
                                                    output_index=index).SerializeToString())
        call = registry.Call(inputs=inputs, options=dict(req.options), candidate_labels=list(req.candidate_labels),
                             ctx=ctx, max_audio_s=self.max_audio_s, emit=emit)
        t0 = time.perf_counter()
        outputs = registry.module_of(lm.entry).run(lm.handle, call)
        resp = X.PipelineResponse(model=lm.model_id, pipeline_type=lm.entry.name, processing_s=time.perf_counter() - t0,
                                  done=True)
        resp.outputs.extend(outputs)
        return resp.SerializeToString()


if __name__ == "__main__":
    run_worker_main(HFWorker)
