"""Sentence embeddings with dynamic batching across concurrent requests.

`Embedder` wraps a sentence-transformers pipeline (a directory with modules.json) or, for a plain
transformers encoder, AutoModel + attention-masked mean pooling. `normalize`: None keeps the model's
own pipeline (all-MiniLM-L6-v2 ends in a Normalize module; plain encoders are L2-normalised),
True forces unit length, False removes normalisation.

`EmbeddingBatcher` runs one thread per model: the first waiting request opens a batch, which closes
when it holds `max_batch` texts or `max_wait_s` has passed; one forward pass serves every request in
it and each gets its own vectors back, in order. Requests cancelled while waiting are skipped.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

import numpy as np


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
            self.max_len = max_seq_length or min(getattr(self.tokenizer, "model_max_length", 512) or 512, 8192)
        self._torch = torch

    @property
    def dimension(self) -> int:
        if self.is_st:
            return int(self.model.get_sentence_embedding_dimension() or 0)
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
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


class _Item:
    __slots__ = ("texts", "future", "cancelled")

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.future: Future = Future()
        self.cancelled = False


class EmbeddingBatcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 32,
                 max_wait_s: float = 0.005, name: str = "embed"):
        self.encode = encode
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self._q: "queue.Queue[Optional[_Item]]" = queue.Queue()
        self._closed = False
        self.batches = 0          # statistics: forward passes run
        self.batched_texts = 0
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def embed(self, texts: list[str], should_stop: Callable[[], Optional[str]]) -> np.ndarray:
        """Blocking: the vectors for `texts`, batched with whatever else is waiting."""
        if self._closed:
            raise RuntimeError("model was unloaded")
        item = _Item(texts)
        self._q.put(item)
        while True:
            try:
                return item.future.result(timeout=0.05)
            except TimeoutError:
                reason = should_stop()
                if reason:
                    item.cancelled = True
                    raise _Stopped(reason)

    def close(self) -> None:
        self._closed = True
        self._q.put(None)

    def _collect(self, first: _Item) -> tuple[list[_Item], Optional[_Item]]:
        batch, count = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_batch:
            left = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, None
            if count + len(item.texts) > self.max_batch:
                return batch, item      # opens the next batch
            batch.append(item)
            count += len(item.texts)
        return batch, _CONTINUE

    def _loop(self) -> None:
        carry: Optional[_Item] = None
        while True:
            first = carry if carry is not None else self._q.get()
            carry = None
            if first is None:
                break
            batch, nxt = self._collect(first)
            live = [it for it in batch if not it.cancelled]
            if live:
                self._run(live)
            if nxt is None:
                break
            if nxt is not _CONTINUE:
                carry = nxt
        while True:   # fail whatever is still queued after close
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if it is not None:
                it.future.set_exception(RuntimeError("model was unloaded"))

    def _run(self, items: list[_Item]) -> None:
        texts = [t for it in items for t in it.texts]
        try:
            out: list = []
            for i in range(0, len(texts), self.max_batch):   # one oversized request runs in chunks
                out.append(self.encode(texts[i:i + self.max_batch]))
            vecs = np.concatenate(out, axis=0)
        except Exception as exc:
            for it in items:
                it.future.set_exception(exc)
            return
        self.batches += 1
        self.batched_texts += len(texts)
        pos = 0
        for it in items:
            it.future.set_result(vecs[pos:pos + len(it.texts)])
            pos += len(it.texts)


class _Stopped(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_CONTINUE = _Item([])
Stopped = _Stopped
