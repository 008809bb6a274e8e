"""Token-by-token generation: a manual decode loop with a KV cache, sampling, incremental detokenisation.

`stream_generate` yields a `Piece` as soon as a decoded token turns into printable text and checks
`should_stop()` before every decoding step, so a cancel or a passed deadline stops generation within
one step (the prompt's prefill is the first step). `encode_within_context` tokenises at most
context x PROMPT_CHARS_PER_TOKEN characters to find out that a prompt cannot fit the model's context,
so a huge prompt costs a bounded tokenisation. temperature 0 means greedy (argmax), never replaced by a default; top_p in (0, 1) keeps the
smallest set of tokens whose probability reaches top_p (nucleus sampling); top_p 0 means "not set" = 1;
top_k > 0 keeps the k most likely tokens before top_p (0 = not set).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from workers.context import WorkerError
from workers.hf import limits

MAX_TEMPERATURE = 100.0
MAX_NEW_TOKENS_LIMIT = limits.GEN_MAX_NEW_TOKENS
MAX_TOP_K = 1 << 20


@dataclass
class GenParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    top_k: int = 0                       # 0 = not set


@dataclass
class Piece:
    text: str
    tokens: int                         # tokens generated so far
    finish_reason: Optional[str] = None  # set on the last piece: stop | length | cancelled | deadline


def validate_params(max_new_tokens: int, temperature: float, top_p: float, default_max: int,
                    top_k: int = 0) -> GenParams:
    """Check request values; 0 for max_new_tokens means the default, 0 for top_p means 1, 0 for top_k all tokens."""
    if max_new_tokens < 0:
        raise WorkerError("INVALID_ARGUMENT", f"max_length must be >= 0 (new tokens; 0 = default {default_max}), got {max_new_tokens}")
    if max_new_tokens > MAX_NEW_TOKENS_LIMIT:
        raise WorkerError("INVALID_ARGUMENT", f"max_length {max_new_tokens} is above the limit of {MAX_NEW_TOKENS_LIMIT} "
                                              "new tokens (the model's context bounds it further)")
    if not math.isfinite(temperature) or temperature < 0 or temperature > MAX_TEMPERATURE:
        raise WorkerError("INVALID_ARGUMENT", f"temperature must be a finite number in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {temperature}")
    if not math.isfinite(top_p) or top_p < 0 or top_p > 1:
        raise WorkerError("INVALID_ARGUMENT", f"top_p must be in [0, 1] (0 = not set, i.e. 1), got {top_p}")
    if top_k < 0 or top_k > MAX_TOP_K:
        raise WorkerError("INVALID_ARGUMENT", f"top_k must be in [0, {MAX_TOP_K}] (0 = not set: every token), "
                                              f"got {top_k}")
    return GenParams(max_new_tokens or default_max, float(temperature), float(top_p) if top_p > 0 else 1.0,
                     top_k=int(top_k))


class IncrementalDetokenizer:
    """Turns a growing token list into text deltas without splitting multi-byte characters.

    Decodes a small window (a few previous tokens + the new ones) and emits only what the window
    gained, holding back text that ends in U+FFFD (an incomplete UTF-8 sequence).
    """

    def __init__(self, tokenizer, prompt_ids: list[int], context: int = 5):
        self.tok = tokenizer
        self.ids = list(prompt_ids[-context:]) if context else []
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):] if len(now) > len(before) else ""


def pick_token(logits: torch.Tensor, params: GenParams, generator: Optional[torch.Generator]) -> int:
    """Greedy when temperature == 0, else temperature + top_k + nucleus (top_p) sampling."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits).item())
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, sorted_i = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        drop = (cum - sorted_p) >= params.top_p   # keep tokens until the mass reaches top_p (>= 1 kept)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(sorted_i[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def context_limit(model) -> Optional[int]:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def encode_within_context(encode: Callable[[str], list[int]], text: str, limit: Optional[int],
                          chars_per_token: int = limits.PROMPT_CHARS_PER_TOKEN) -> list[int]:
    """`encode(text)`, but a text far beyond `limit` tokens is refused after tokenising a bounded prefix.

    Only a text longer than limit x chars_per_token characters is looked at: if its prefix of that many
    characters alone holds more than twice `limit` tokens, the whole cannot fit (cutting a text changes its
    token count only near the cut). Ordinary text (~4 characters a token) is always caught this way; a
    text that is not falls back to full tokenisation, bounded by PROMPT_MAX_CHARS, and the exact check in
    stream_generate.
    """
    if limit is not None and len(text) > limit * chars_per_token:
        n = limit * chars_per_token
        head = encode(text[:n])
        if len(head) > 2 * limit:
            raise WorkerError("INVALID_ARGUMENT", f"prompt is {len(text)} characters and its first {n} alone are "
                                                  f"{len(head)} tokens; this model's context is {limit} tokens: "
                                                  "shorten the prompt")
    return encode(text)


def stream_generate(model, tokenizer, prompt_ids: list[int], params: GenParams,
                    should_stop: Callable[[], Optional[str]], device: str = "cpu") -> Iterator[Piece]:
    """Yield text pieces as tokens are decoded; the last Piece has finish_reason set.

    `should_stop()` returns None to go on, or a finish reason ("cancelled", "deadline").
    """
    limit = context_limit(model)
    budget = params.max_new_tokens
    if limit is not None:
        if len(prompt_ids) >= limit:
            raise WorkerError("INVALID_ARGUMENT", f"prompt is {len(prompt_ids)} tokens; this model's context is {limit} tokens")
        budget = min(budget, limit - len(prompt_ids))
    stop_ids = eos_ids(model, tokenizer)
    generator = None
    if params.seed is not None and params.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    extra = {}
    try:   # only the last position's logits are needed (saves the LM head over the whole prompt)
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            extra["logits_to_keep"] = 1
    except (TypeError, ValueError):
        pass
    n = 0
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    past = None
    while True:
        reason = should_stop()
        if reason:
            yield Piece(detok.flush(), n, reason)
            return
        if n >= budget:
            yield Piece(detok.flush(), n, "length")
            return
        # inference mode around the step only, never across a yield: it is thread-local state, and a generator
        # suspended (or closed later by the garbage collector) inside it would switch it for whatever code runs
        # on this thread meanwhile, e.g. another request's decode step
        with torch.inference_mode():
            out = model(input_ids=ids, past_key_values=past, use_cache=True, **extra)
            past = out.past_key_values
            token = pick_token(out.logits[0, -1, :], params, generator)
            del out
        n += 1
        if token in stop_ids:
            yield Piece(detok.flush(), n, "stop")
            return
        text = detok.add(token)
        if text:
            yield Piece(text, n)
        ids = torch.tensor([[token]], dtype=torch.long, device=device)
