"""Sentence embeddings with dynamic batching across concurrent requests.

`Embedder` wraps a sentence-transformers pipeline (a directory with modules.json) or, for a plain
transformers encoder, AutoModel + attention-masked mean pooling. `normalize`: None keeps the model's
own pipeline (all-MiniLM-L6-v2 ends in a Normalize module; plain encoders are L2-normalised),
True forces unit length, False removes normalisation. Each text is clipped to `max_chars` (the model's
max tokens x limits.EMBED_CHARS_PER_TOKEN) before tokenisation: the model reads no further anyway, and
tokenising a 30k-character text only to keep its first 256 tokens is wasted time.

`EmbeddingBatcher` runs one thread per model. Waiting requests are served in sub-batches of at most
`max_batch` texts and `max_batch_chars` characters, filled round-robin across requests (a big request
does not hold a small one back for its whole duration). When the model is idle and a request arrives,
the batch closes as soon as the callers the last batch answered are back, with those who came while it
ran (a closed loop of 32 clients gives batches of 32 while the model waits out the round trip, rather
than half batches whose transport competes with the model for the cores; one client is served at once,
with no timer), else once the fill wait passed since that first request, or when `max_batch` texts
wait. The fill wait is `max_wait_s` when the operator set one, else it follows the model: a quarter of
the last forward pass (at least 5 ms). On 2 cores, 32 closed-loop clients are back 10-15 ms after a
~80 ms pass of 32 sentences: a fixed 5 ms timer split them into batches of ~15 whose forward passes ran
beside the other half's transport (two OpenMP threads on two busy cores stall at every barrier). Token
counts (the reply's prompt_tokens) are taken per sub-batch in this thread, one tokenizer call for all
its texts, instead of in each of the 32 handler threads that wake at once when a batch is answered. The
batcher thread is woken once per batch, not per request: a request wakes it only when it completes what the
batcher waits for. Each request hands in its cancel token
(workers/hf/cancel.py); before every sub-batch the batcher asks each token: a cancelled or expired
request is dropped there, so it stops within one sub-batch, and its caller (blocked on the result, not
polling) is answered only then (a request counts as in flight until its work stopped). A request still
waiting when the model is unloaded ends with common.status.ModelUnloaded.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable, Optional

import numpy as np

from common.status import ModelUnloaded
from workers.hf import limits
from workers.hf.cancel import CancelToken


class Embedder:
    def __init__(self, path: str, device: str, dtype, normalize: Optional[bool], max_seq_length: int = 0):
        import torch
        self.device = device
        self.normalize = normalize
        self.is_st = False
        from pathlib import Path
        if (Path(path) / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer
            try:
                from sentence_transformers.sentence_transformer.modules import Normalize
            except ImportError:  # sentence-transformers < 6
                from sentence_transformers.models import Normalize
            st = SentenceTransformer(str(path), device=device, local_files_only=True,
                                     model_kwargs={"dtype": dtype} if dtype is not None else None)
            if normalize is False:
                st = SentenceTransformer(modules=[m for m in st if not isinstance(m, Normalize)], device=device)
            if max_seq_length:
                st.max_seq_length = max_seq_length
            st.eval()
            self.model, self.tokenizer, self.is_st = st, st.tokenizer, True
        else:
            from transformers import AutoModel, AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype).to(device).eval()
            # a tokenizer saved without model_max_length says 1e30: the position table is the real bound
            positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or 8192
            self.max_len = max_seq_length or min(getattr(self.tokenizer, "model_max_length", 512) or 512, positions, 8192)
        self._torch = torch
        tokens = int(getattr(self.model, "max_seq_length", 0) or 0) if self.is_st else self.max_len
        self.max_chars = max(1, tokens or 512) * limits.EMBED_CHARS_PER_TOKEN

    @property
    def dimension(self) -> int:
        if self.is_st:
            return int(self.model.get_sentence_embedding_dimension() or 0)
        return int(self.model.config.hidden_size)

    def token_counts(self, texts: list[str]) -> list:
        """Tokens the model reads for each of `texts` (special tokens included, after truncation, as encode
        does): the OpenAI API's usage.prompt_tokens. The batcher asks once per sub-batch (one tokenizer call,
        ~20 us per short sentence) rather than each request's handler thread on its own (~30 us each alone,
        100-250 us each when 32 answered threads wake at once and queue for the GIL)."""
        limit = int(getattr(self.model, "max_seq_length", 0) or 0) if self.is_st else self.max_len
        enc = self.tokenizer([t[:self.max_chars] for t in texts], add_special_tokens=True, truncation=bool(limit),
                             max_length=limit or None)
        return [len(ids) for ids in enc["input_ids"]]

    def count_tokens(self, texts: list[str]) -> int:
        """The sum of token_counts(texts)."""
        return sum(self.token_counts(texts))

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        texts = [t[:self.max_chars] for t in texts]
        with torch.inference_mode():
            if self.is_st:
                return self.model.encode(texts, batch_size=max(1, len(texts)), convert_to_numpy=True,
                                         normalize_embeddings=bool(self.normalize), show_progress_bar=False)
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize is not False:
                vec = torch.nn.functional.normalize(vec, p=2, dim=1)
            return vec.float().cpu().numpy()


class Stopped(Exception):
    """The request's cancel token said stop ("cancelled" or "deadline"); its work was dropped."""

    def __init__(self, reason: str, done: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.done = done          # texts of the request embedded before it stopped


class _Item:
    """One request: its texts, how far the batcher got, and the vectors so far."""

    def __init__(self, texts: list[str], cancel: CancelToken):
        self.texts = texts
        self.cancel = cancel
        self.future: Future = Future()
        self.taken = 0                   # texts handed to a sub-batch so far
        self.parts: list = []            # their vectors, in order
        self.tokens = 0                  # tokens of the texts embedded so far (with a `count`)


class EmbeddingBatcher:
    MIN_WAIT_S = 0.005     # the adaptive fill wait's floor (and the old fixed timer)
    FILL_SHARE = 0.25      # ... else this share of the last forward pass: the model idles <= 1/5 waiting

    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = limits.EMBED_BATCH_TEXTS,
                 max_wait_s: Optional[float] = None, name: str = "embed",
                 max_batch_chars: int = limits.EMBED_BATCH_CHARS, clip_chars: Optional[int] = None,
                 count: Optional[Callable[[list[str]], list]] = None):
        """`max_wait_s`: the longest a batch waits for the callers it expects; None (the default) lets it
        follow the model: FILL_SHARE of the last forward pass, at least MIN_WAIT_S (see fill_wait_s).
        `clip_chars`: how many characters of a text `encode` reads (for the sub-batch size); None takes
        `max_chars` of the object `encode` is bound to (an Embedder), if any. `count`: texts -> tokens of
        each (Embedder.token_counts), asked once per sub-batch for embed_counted."""
        self.encode = encode
        self.count = count
        self.max_batch = max(1, int(max_batch))
        self.max_batch_chars = max(1, int(max_batch_chars))
        if clip_chars is None:
            clip_chars = int(getattr(getattr(encode, "__self__", None), "max_chars", 0) or 0)
        self.clip_chars = clip_chars or None
        self.max_wait_s = None if max_wait_s is None else max(0.0, float(max_wait_s))
        self.last_pass_s = 0.0    # how long the last forward pass took (for the adaptive fill wait)
        self.name = name
        self._cv = threading.Condition()      # guards the fields below; no request is queued after close()
        self._waiting: deque = deque()        # requests not yet taken by the batcher thread
        self._waiting_texts = 0
        self._wake_at = 1                     # requests waiting that wake the batcher thread
        self._closed = False
        self._expect = 1                      # requests the last batch answered: whom to wait for next
        self.batches = 0          # statistics: forward passes (sub-batches) run
        self.batched_texts = 0
        self.dropped_texts = 0    # texts of cancelled / expired requests never encoded
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def embed(self, texts: list[str], cancel: CancelToken) -> np.ndarray:
        """Blocking: the vectors for `texts`, batched with whatever else is waiting.

        Raises Stopped once the batcher has let go of a request whose token said stop, never before:
        the caller's reply then means the work really stopped. Raises ModelUnloaded after close()."""
        return self.embed_counted(texts, cancel)[0]

    def embed_counted(self, texts: list[str], cancel: CancelToken) -> tuple:
        """embed(), and the tokens the model read for `texts` (None without a `count`)."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32), (0 if self.count else None)
        item = _Item(texts, cancel)
        with self._cv:
            if self._closed:
                raise ModelUnloaded(self.name)
            self._waiting.append(item)
            self._waiting_texts += len(texts)
            if len(self._waiting) >= self._wake_at or self._waiting_texts >= self.max_batch:
                self._cv.notify()
        vecs = item.future.result()   # always set: by a sub-batch, a stop, or the loop's exit
        return vecs, (item.tokens if self.count else None)

    def fill_wait_s(self) -> float:
        """The longest a batch waits, from its first request, for the others it expects: max_wait_s when
        it was given, else FILL_SHARE of the last forward pass (at least MIN_WAIT_S)."""
        if self.max_wait_s is not None:
            return self.max_wait_s
        return max(self.MIN_WAIT_S, self.FILL_SHARE * self.last_pass_s)

    def waiting(self) -> int:
        """Requests handed in and not yet taken by the batcher thread."""
        with self._cv:
            return len(self._waiting)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    # ---- batcher thread ----------------------------------------------------------------------------
    def _gather(self, active: list, block: bool) -> bool:
        """Move waiting requests into `active`. When `block`: wait for a first one, then until as many
        requests wait as the last batch answered (or max_batch texts), at most max_wait_s after the
        first. Returns False once close() was called."""
        cv = self._cv
        with cv:
            if block:
                self._wake_at = 1
                # whom to wait for: the callers the last batch answered (a closed loop sends them
                # again) plus those who came while it ran
                target = min(self._expect + len(self._waiting), self.max_batch)
                self._expect = 1
                while not self._waiting and not self._closed:
                    cv.wait()
                deadline = time.monotonic() + self.fill_wait_s()
                self._wake_at = target
                while (len(self._waiting) < target and self._waiting_texts < self.max_batch
                       and not self._closed):
                    left = deadline - time.monotonic()
                    if left <= 0 or not cv.wait(left):
                        break
                self._wake_at = 1 << 30   # busy: nobody needs to wake this thread until it looks again
            if self._closed:
                return False
            active.extend(self._waiting)
            self._waiting.clear()
            self._waiting_texts = 0
            return True

    def _drop_stopped(self, active: list) -> list:
        live = []
        for it in active:
            reason = it.cancel.reason()
            if reason:
                self.dropped_texts += len(it.texts) - it.taken
                it.future.set_exception(Stopped(reason, it.taken))
            else:
                live.append(it)
        return live

    def _cost(self, text: str) -> int:
        return min(len(text), self.clip_chars) if self.clip_chars else len(text)

    def _take(self, active: list) -> list:
        """The next sub-batch: [(item, start, end)], one text per request in turn (round-robin)."""
        counts = [0] * len(active)
        n = chars = 0
        more = True
        while more and n < self.max_batch:
            more = False
            for i, it in enumerate(active):
                pos = it.taken + counts[i]
                if pos >= len(it.texts):
                    continue
                cost = self._cost(it.texts[pos])
                if n and chars + cost > self.max_batch_chars:
                    more = False
                    break
                counts[i] += 1
                n += 1
                chars += cost
                more = True
                if n >= self.max_batch:
                    break
        return [(it, it.taken, it.taken + c) for it, c in zip(active, counts) if c]

    def _run(self, active: list) -> list:
        """Encode one sub-batch; returns the requests still waiting for texts."""
        spans = self._take(active)
        texts = [t for it, a, b in spans for t in it.texts[a:b]]
        try:
            t0 = time.monotonic()
            vecs = self.encode(texts)
            self.last_pass_s = time.monotonic() - t0
            counts = self.count(texts) if self.count else None
        except Exception as exc:
            failed = {id(it) for it, _, _ in spans}
            for it, _, _ in spans:
                it.future.set_exception(exc)
            return [it for it in active if id(it) not in failed]
        self.batches += 1
        self.batched_texts += len(texts)
        pos = answered = 0
        for it, a, b in spans:
            it.parts.append(vecs[pos:pos + b - a])
            if counts is not None:
                it.tokens += sum(counts[pos:pos + b - a])
            pos += b - a
            it.taken = b
            if it.taken == len(it.texts):
                answered += 1
                it.future.set_result(np.concatenate(it.parts, axis=0) if len(it.parts) > 1 else it.parts[0])
        self._expect = max(1, answered)
        return [it for it in active if not it.future.done()]

    def _loop(self) -> None:
        active: list = []
        open_ = True
        try:
            while open_:
                open_ = self._gather(active, block=not active)
                if not open_:
                    break
                active = self._drop_stopped(active)
                if active:
                    active = self._run(active)
        finally:   # fail whatever is left after close (or a crash of this loop)
            with self._cv:
                self._closed = True
                active.extend(self._waiting)
                self._waiting.clear()
            for it in active:
                if not it.future.done():
                    it.future.set_exception(ModelUnloaded(self.name))
