"""LiteRT-LM language models (`.litertlm` / `.task` bundles) for GenerateText and ChatCompletion.

The hf worker hosts the engine (litert-lm-api): its requests already route here, its generation slots and
cancel checks apply, and the litert worker's `.tflite` requests never wait behind a language model.

- Load: the bundle is checked first (workers/hf/litertlm_file.py: a bad one is FAILED_PRECONDITION naming the
  problem), then `litert_lm.Engine` is created with the worker's thread budget and the engine's XNNPACK weight
  cache in the worker's private cache folder (never next to the model). GPU: `Backend.GPU()` is tried when the
  worker runs on a CUDA device, `--litert-gpu` is set or a GPU device node exists (load option
  `gpu_delegate=false` skips it); when it cannot start, the engine runs on CPU and the LoadModel answer and the
  log say why.
- Prompt: the bundle's own chat template renders the messages (a throwaway Conversation renders, it does not
  generate; a template that fails falls back to a plain transcript, logged). The engine adds the start token
  itself, so a rendered prompt that begins with it loses it: the model reads exactly the template's tokens.
- Generation runs on a Session (prefill, then decode streamed through our own callback). The Conversation
  API's streaming is not used: it serialises every piece as JSON in native code and aborts the whole process
  when a token ends inside a multi-byte character (litert-lm-api 0.18.1, e.g. Chinese output). Pieces arrive
  as bytes and go through an incremental UTF-8 decoder. Temperature 0 is greedy (top_k 1); otherwise top_k
  (0 = every token), top_p and temperature go to the engine's sampler. A cancel or passed deadline calls
  `cancel_process()` within one decoding step (the prefill is the first step); the session is closed only
  after the engine has delivered its last callback.
- One generation at a time per engine (a waiting request still notices its cancel); finish_reason is
  "length" when the token budget (max tokens, clamped to the bundle's context) was used up, else "stop".
"""
from __future__ import annotations

import codecs
import ctypes.util
import glob
import logging
import os
import queue
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from common.options import as_bool
from common.status import ModelUnloaded
from workers.context import WorkerError
from workers.hf.generation import Piece, encode_within_context

log = logging.getLogger("hf.litert_lm")
POLL_S = 0.05
DRAIN_S = 30.0
ALL_TOKENS_K = 1 << 20     # top_k "not set": larger than any vocabulary
_ABANDONED: list = []      # sessions whose engine never confirmed a cancel: kept alive, never freed under it


@dataclass
class LiteRtLm:
    model_id: str
    path: Path
    engine: object
    backend: str                            # "cpu" | "gpu"
    note: str = ""                           # what LoadModel says about the backend (e.g. the GPU fallback)
    context: Optional[int] = None            # the bundle's max_num_tokens
    bos_text: str = ""
    cache_dir: str = ""
    own_cache: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    template_ok: bool = True

    def close(self) -> None:
        eng, self.engine = self.engine, None
        if eng is not None:
            with self.lock:              # never under a running generation
                eng.close()
        if self.own_cache and self.cache_dir:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


# ---- native log capture --------------------------------------------------------------------------
@contextmanager
def native_stderr(out: list):
    """Collect what native code writes to fd 2 meanwhile (the runtime's only account of why an engine
    failed), then write it to the real stderr as well: delayed, never lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:
        yield
        return
    tmp = tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 2)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        data = tmp.read(1 << 20).decode("utf-8", "replace")
        tmp.close()
        if data:
            try:
                os.write(2, data.encode())
            except OSError:
                pass
        out.append(data)


def native_reason(text: str) -> str:
    """The runtime's own reason in its log text, one line."""
    for pat in (r"Failed to create engine: ([^\n]+)", r"Couldn't load ([^\n]+)", r"Failed to [^\n]+",
                r"ERROR: \[[^\]]+\] ([^\n]+)"):
        m = re.search(pat, text)
        if m:
            return (m.group(1) if m.groups() else m.group(0)).strip()[:300]
    return ""


def gpu_present() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/dri/renderD*"))


# ---- load ----------------------------------------------------------------------------------------
def _engine(litert_lm, path: Path, backend, cache_dir: str):
    captured: list = []
    try:
        with native_stderr(captured):
            return litert_lm.Engine(str(path), backend=backend, cache_dir=cache_dir), ""
    except Exception as exc:  # RuntimeError("Failed to create LiteRT-LM engine for ...")
        return None, native_reason("".join(captured)) or str(exc)


def load(lc) -> LiteRtLm:
    from workers.hf import litertlm_file
    try:
        import litert_lm
    except ImportError:
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' is a LiteRT-LM bundle but litert-lm-api is "
                                                 "not installed in the service's environment: run scripts/setup.sh "
                                                 "(requirements.txt pins litert-lm-api==0.18.1)") from None
    info = litertlm_file.inspect(lc.path)
    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    base = lc.worker_options.get("cache_dir") or ""
    own = not base
    cache_dir = tempfile.mkdtemp(prefix="pml-litertlm-") if own else os.path.join(base, "litertlm")
    os.makedirs(cache_dir, exist_ok=True)
    threads = max(1, int(lc.threads or 0) or (os.cpu_count() or 1))
    asked = as_bool(lc.opts.get("gpu_delegate"), None, "gpu_delegate")   # None: not said, decide below
    want_gpu = asked if asked is not None else (
        lc.device.startswith("cuda") or bool(lc.worker_options.get("gpu_delegate")) or gpu_present())
    engine, backend, note = None, "cpu", f"CPU backend (XNNPACK, {threads} threads)"
    if want_gpu:
        engine, why = _engine(litert_lm, lc.path, litert_lm.Backend.GPU(), cache_dir)
        if engine is not None:
            backend, note = "gpu", "GPU backend"
        else:
            vulkan = "found" if ctypes.util.find_library("vulkan") else "not found"
            note = (f"GPU backend unavailable ({why}; the LiteRT-LM GPU backend needs a Vulkan driver, "
                    f"libvulkan {vulkan}): running on the CPU backend (XNNPACK, {threads} threads)")
            log.warning("%s: %s", lc.model_id, note)
    if engine is None:
        engine, why = _engine(litert_lm, lc.path, litert_lm.Backend.CPU(thread_count=threads), cache_dir)
        if engine is None:
            if own:
                shutil.rmtree(cache_dir, ignore_errors=True)
            raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' ({lc.path.name}, LiteRT-LM format "
                                                     f"{info.version or info.kind}) passed the bundle checks but the "
                                                     f"LiteRT-LM engine refused it: {why}")
    bos_text = ""
    try:
        bos = engine.bos_token_id
        bos_text = engine.detokenize([bos]) if bos is not None else ""
    except Exception:
        pass
    return LiteRtLm(lc.model_id, Path(lc.path), engine, backend, note, info.max_num_tokens, bos_text, cache_dir, own)


def warm_up(h: LiteRtLm) -> None:
    """Render one message and generate one token, so a bundle that loads but cannot run fails its load."""
    for _ in stream(h, [{"role": "user", "content": "Hi"}], None, max_new_tokens=1, temperature=0.0, top_p=1.0,
                    top_k=0, should_stop=lambda: None):
        pass


# ---- prompt --------------------------------------------------------------------------------------
def _transcript(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"


def render(h: LiteRtLm, messages: list[dict]) -> str:
    """The bundle's chat template over `messages` (history + the last one), generation prompt included.
    The caller holds h.lock (a Conversation holds an engine session while it exists)."""
    text = None
    if h.template_ok:
        conv = None
        try:
            conv = h.engine.create_conversation(messages=messages[:-1] or None)
            text = conv.render_message_to_string(messages[-1])
        except Exception as exc:
            log.warning("%s: the bundle's chat template failed (%s; the worker log has the runtime's "
                        "reason); using a plain role: content transcript", h.model_id, exc)
            text = None
        finally:
            if conv is not None:
                conv.close()
        if not text:
            h.template_ok = False
    if text is None:
        text = _transcript(messages)
    if h.bos_text and text.startswith(h.bos_text):
        text = text[len(h.bos_text):]   # the engine adds the start token itself
    return text


def count_prompt(h: LiteRtLm, prompt: str) -> int:
    """Tokens the engine will prefill (the start token included); a prompt far beyond the context is refused
    after tokenising a bounded prefix (generation.encode_within_context)."""
    ids = encode_within_context(h.engine.tokenize, prompt, h.context)
    return len(ids) + (1 if h.bos_text else 0)


# ---- generation ----------------------------------------------------------------------------------
def _sampler(litert_lm, temperature: float, top_p: float, top_k: int):
    if temperature == 0.0:
        return litert_lm.SamplerConfig(top_k=1, top_p=1.0, temperature=0.0, seed=0)
    return litert_lm.SamplerConfig(top_k=top_k or ALL_TOKENS_K, top_p=top_p or 1.0, temperature=temperature,
                                   seed=random.randrange(1, 2**31))


def stream(h: LiteRtLm, messages: list[dict], raw_text: Optional[str], max_new_tokens: int, temperature: float,
           top_p: float, top_k: int, should_stop: Callable[[], Optional[str]]) -> Iterator[Piece]:
    """Yield text pieces as the engine decodes `messages` rendered by the chat template (or `raw_text` as is);
    the last Piece has finish_reason set."""
    import litert_lm
    from litert_lm._ffi import STREAM_CALLBACK_TYPE
    while not h.lock.acquire(timeout=POLL_S):   # one generation at a time per engine; a waiting cancel counts
        reason = should_stop()
        if reason:
            yield Piece("", 0, reason)
            return
    try:
        if h.engine is None:
            raise ModelUnloaded(h.model_id)
        prompt = raw_text if raw_text is not None else render(h, messages)
        n_prompt = count_prompt(h, prompt)
        budget = max_new_tokens
        if h.context:
            if n_prompt >= h.context:
                raise WorkerError("INVALID_ARGUMENT", f"prompt is {n_prompt} tokens; this model's context is "
                                                      f"{h.context} tokens (what its bundle was exported for): "
                                                      f"shorten it")
            budget = min(budget, h.context - n_prompt)
        yield from _decode(h, litert_lm, STREAM_CALLBACK_TYPE, prompt, budget,
                           _sampler(litert_lm, temperature, top_p, top_k), should_stop)
    finally:
        h.lock.release()


def _decode(h, litert_lm, callback_type, prompt: str, budget: int, sampler, should_stop) -> Iterator[Piece]:
    reason = should_stop()
    if reason:
        yield Piece("", 0, reason)
        return
    session = h.engine.create_session(apply_prompt_template=False, sampler_config=sampler, max_output_tokens=budget)
    lib = session._lib
    q: queue.Queue = queue.Queue()

    def on_chunk(_data, chunk):    # a native thread: never raise here
        try:
            err = lib.litert_lm_stream_chunk_get_error(chunk)
            text = lib.litert_lm_stream_chunk_get_text(chunk)
            q.put((err, text, bool(lib.litert_lm_stream_chunk_is_final(chunk))))
        except BaseException as exc:  # noqa: BLE001
            q.put((repr(exc).encode(), None, True))

    callback = callback_type(on_chunk)
    started = False
    try:
        try:
            session.run_prefill([prompt])
        except RuntimeError:
            raise WorkerError("INTERNAL", f"LiteRT-LM prefill of {len(prompt)} characters failed for model "
                                          f"'{h.model_id}' (the worker log has the runtime's reason)") from None
        reason = should_stop()
        if reason:
            yield Piece("", 0, reason)
            return
        if lib.litert_lm_session_run_decode_async(session._ptr, callback, None) != 0:
            raise WorkerError("INTERNAL", f"LiteRT-LM could not start decoding for model '{h.model_id}'")
        started = True
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        n = 0
        pieces: list = []
        while True:
            try:
                err, data, final = q.get(timeout=POLL_S)
            except queue.Empty:   # nothing yet: only the cancel check below
                err, data, final = None, None, False
            text = ""
            if data is not None:
                n += 1
                text = utf8.decode(data)
                pieces.append(text)
            if err is not None or final:
                started = False
                msg = err.decode("utf-8", "replace") if err else ""
                if err and "CANCELLED" not in msg and "Max number of tokens" not in msg:
                    raise WorkerError("INTERNAL", f"LiteRT-LM decoding failed for model '{h.model_id}': {msg}")
                tail = utf8.decode(b"", final=True)
                text += tail
                pieces.append(tail)   # `text`'s decoded part is in `pieces` already
                used = generated_tokens(h, "".join(pieces), n)
                if used >= budget or "Max number of tokens" in msg:
                    yield Piece(text, max(used, n), "length")
                else:
                    yield Piece(text, max(used + 1, n), "stop")   # + the stop token, as the transformers path counts
                return
            if text:
                yield Piece(text, n)
            reason = should_stop()
            if reason:
                session.cancel_process()
                started = not _drain(q)
                yield Piece(utf8.decode(b"", final=True), n, reason)
                return
    finally:
        if started:   # a generator closed early (the client went away): stop the engine before closing
            session.cancel_process()
            started = not _drain(q)
        if started:   # closing it under a running decode would free what the engine still uses
            log.error("%s: the engine did not finish within %.0fs of a cancel; its session is left open",
                      h.model_id, DRAIN_S)
            _ABANDONED.append((session, callback))
        else:
            session.close()


def generated_tokens(h: LiteRtLm, text: str, chunks: int) -> int:
    """Tokens the engine generated: its text re-tokenised. Pieces are no count: the engine holds back a token
    that may begin a stop sequence and sends it with the next one."""
    try:
        return max(chunks, len(h.engine.tokenize(text))) if text else chunks
    except Exception:
        return chunks


def _drain(q: queue.Queue) -> bool:
    """Wait for the engine's last callback after a cancel; True when it came."""
    end = time.monotonic() + DRAIN_S
    while time.monotonic() < end:
        try:
            err, _data, final = q.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if err is not None or final:
            return True
    return False
