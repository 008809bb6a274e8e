"""Request handlers of the hf pool, independent of the worker process plumbing.

`HFService(options, device, ...).handlers()` maps each method path (common/methods.py) to `fn(ctx) -> bytes`:
- ml.TransformersService/GenerateText     stream of TextResponse, one per decoded piece
- ml.TransformersService/ChatCompletion   stream of ChatResponse, model's chat template, finish_reason
- ml.TransformersService/GenerateEmbeddings  dynamic batching across concurrent requests
- ml.ModelManagementService/LoadModel|UnloadModel  measured RAM / VRAM deltas
- pythonml.v1.Speech/Transcribe|StreamTranscribe
- pythonml.v1.Pipelines/Run|RunStream      every pipeline of workers/hf/pipelines/registry.py

One handler group per module of workers/hf/handlers/ (models, text, embeddings, speech, pipelines);
this class holds the worker options they share. Models resolve through workers/hf/resolve.py (built-in
alias, local dir, orchestrator file service) and load on first use when options["auto_load"] is true.
A LiteRT-LM bundle (`.litertlm` / `.task`, e.g. the built-in SmolLM2-135M-Instruct-litertlm) serves
GenerateText and ChatCompletion through its own engine (workers/hf/pipelines/litert_lm.py), with the same
limits, generation slots and cancel checks.

Every count, size and duration of a request is bounded before parsing / tokenising / running it:
the limits, their defaults and the worker options that change them are in workers/hf/limits.py.
A cancelled or expired request stops within one generated token, one embedding sub-batch or one
transcribed segment, and is answered only once its work has stopped (the broker counts it in flight
until then, so Stats tells the truth).

Worker options used: auto_load, model_dirs, cache_dir, model_file_service, threads, plus optional
default_generation_model, default_embedding_model, default_speech_model, default_max_new_tokens (256),
chat_max_new_tokens (512), gen_concurrency (4), max_audio_s, max_pipeline_inputs (256),
embed_max_batch (32) and embed_max_wait_ms (unset: the batcher's wait follows the model; read by
workers/hf/pipelines/sentence_embeddings.py),
recycle_on_unload (true), warm_imports (true: workers/hf/warm.py), and the limit options of
workers/hf/limits.py.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from common import methods
from common.options import as_bool
from workers.base import ModelRegistry
from workers.hf import limits
from workers.hf.handlers.embeddings import EmbeddingHandlers
from workers.hf.handlers.models import ModelHandlers
from workers.hf.handlers.pipelines import PipelineHandlers
from workers.hf.handlers.speech import SpeechHandlers
from workers.hf.handlers.text import TextHandlers
from workers.hf.resolve import ModelResolver


class HFService(ModelHandlers, TextHandlers, EmbeddingHandlers, SpeechHandlers, PipelineHandlers):
    def __init__(self, options: dict, device: str = "cpu", log: Optional[logging.Logger] = None,
                 models: Optional[ModelRegistry] = None, request_recycle: Optional[Callable[[str], None]] = None):
        import torch
        o = self.options = dict(options or {})
        self.device = device or "cpu"
        self.log = log or logging.getLogger(f"hf@{self.device}")
        # the worker's one registry of loaded models (workers/base.py): records carry a LoadedModel as runtime
        self.models = models if models is not None else ModelRegistry()
        self.request_recycle = request_recycle or (lambda reason: None)
        self.torch = torch
        self.auto_load = as_bool(o.get("auto_load"), True, "auto_load")
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
        self.recycle_on_unload = as_bool(o.get("recycle_on_unload"), True, "recycle_on_unload")
        self.gen_slots = threading.BoundedSemaphore(max(1, int(o.get("gen_concurrency") or 4)))
        self.resolver = ModelResolver.from_options(o)
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._load_serial = threading.Lock()

    def warm(self) -> None:
        """Import the default generation model's transformers code before READY (~1.6 s here instead of
        inside the first GenerateText), unless the worker option warm_imports is false."""
        if as_bool(self.options.get("warm_imports"), True, "warm_imports"):
            from workers.hf.warm import warm_generation_imports
            warm_generation_imports(self.resolver, self.default_gen_model, self.log)

    def handlers(self) -> dict:
        return {methods.GENERATE_TEXT: self.generate_text,
                methods.CHAT_COMPLETION: self.chat_completion,
                methods.GENERATE_EMBEDDINGS: self.generate_embeddings,
                methods.LOAD_MODEL: self.load_model,
                methods.UNLOAD_MODEL: self.unload_model,
                methods.TRANSCRIBE: self.transcribe,
                methods.STREAM_TRANSCRIBE: self.stream_transcribe,
                methods.PIPELINES_RUN: self.run_pipeline,
                methods.PIPELINES_RUN_STREAM: self.run_pipeline_stream}
