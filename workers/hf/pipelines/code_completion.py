"""code-completion: a causal code model continues a prefix, or fills the middle between a prefix and a suffix.

Inputs: text inputs; role "" or "prefix" is the code before the cursor, role "suffix" the code after it (it
belongs to the prefix input right before it; a suffix with no prefix before it has an empty prefix). One
output per prefix: `text` = the completion (the middle, for fill-in-the-middle), `token_ids` = the generated
ids (the stop token left out).

Fill-in-the-middle uses the model's own FIM tokens, found in its tokenizer's vocabulary (FIM_CONVENTIONS:
StarCoder `<fim_prefix>`, SantaCoder `<fim-prefix>`, Qwen2.5-Coder / CodeGemma `<|fim_prefix|>`, CodeLlama
`<PRE>`, DeepSeek-Coder `<｜fim▁begin｜>`, Codestral `[SUFFIX]`/`[PREFIX]`). A model without them answers a
suffix with FAILED_PRECONDITION; plain completion (no suffix) works with any causal LM. Generation stops at
the model's end tokens, the convention's end tokens (`<|endoftext|>`, `<file_sep>`, `<EOT>`, `<|fim_pad|>`,
...) and the FIM tokens themselves. A prompt longer than the model's context keeps the end of the prefix
and the start of the suffix (the code nearest the cursor).

Options: max_new_tokens (64, 1..4096), temperature (0 = greedy), top_p (1.0), seed (0, when sampling),
stop (a string: the completion is cut before its first occurrence).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from protos import pythonml_pb2 as X
from workers.context import WorkerError
from workers.hf.pipelines.common import stopping
from workers.hf.pipelines.registry import bounded_option


@dataclass(frozen=True)
class FIM:
    name: str
    prefix: str
    suffix: str
    middle: str = ""          # "" for conventions without one (Codestral: the prefix comes last)
    order: str = "psm"        # psm: PRE prefix SUF suffix MID ; spm: SUF suffix PRE prefix
    stops: tuple = ()         # end tokens of the convention (used when the vocabulary has them)


FIM_CONVENTIONS = (
    FIM("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
        stops=("<|endoftext|>", "<file_sep>", "<fim_pad>")),
    FIM("santacoder", "<fim-prefix>", "<fim-suffix>", "<fim-middle>", stops=("<|endoftext|>", "<fim-pad>")),
    FIM("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
        stops=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>", "<|file_separator|>")),
    FIM("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", stops=("▁<EOT>",)),
    FIM("codellama", "<PRE>", "<SUF>", "<MID>", stops=("<EOT>",)),
    FIM("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
        stops=("<｜end▁of▁sentence｜>", "<|EOT|>")),
    FIM("codestral", "[PREFIX]", "[SUFFIX]", "", order="spm"),
)


def detect_fim(tokenizer) -> Optional[FIM]:
    """The first convention whose FIM tokens are all single tokens of the tokenizer's vocabulary."""
    vocab = tokenizer.get_vocab()
    for c in FIM_CONVENTIONS:
        if all(t in vocab for t in (c.prefix, c.suffix, c.middle) if t):
            return c
    return None


@dataclass
class Coder:
    model: Any
    tokenizer: Any
    device: str
    model_id: str
    fim: Optional[FIM]
    stop_ids: list                 # generation ends at any of these
    bos: Optional[int]             # prepended when the tokenizer adds it to plain text
    limit: int                     # context length in tokens
    anchor: list                   # a token decoded before the completion, so a leading space survives decoding
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(lc) -> Coder:
    from workers.hf.generation import context_limit
    from workers.hf.pipelines import text_generation
    lm = text_generation.load(lc)
    tok, m = lm.tokenizer, lm.model
    fim = detect_fim(tok)
    vocab = tok.get_vocab()
    stops = set()
    for src in (tok.eos_token_id, getattr(m.generation_config, "eos_token_id", None)):
        stops.update(src if isinstance(src, (list, tuple)) else [src] if src is not None else [])
    if fim is not None:
        stops.update(vocab[t] for t in (*fim.stops, fim.prefix, fim.suffix, fim.middle) if t in vocab)
    plain = tok("a")["input_ids"]
    bos = tok.bos_token_id if tok.bos_token_id is not None and plain[:1] == [tok.bos_token_id] else None
    limit = context_limit(m) or (tok.model_max_length if 0 < (tok.model_max_length or 0) < 10**7 else 2048)
    return Coder(m, tok, lc.device, lc.model_id, fim, sorted(stops), bos, int(limit),
                 tok.encode("\n", add_special_tokens=False)[-1:])


def warm_up(h: Coder) -> None:
    import torch
    with torch.inference_mode():
        h.model(input_ids=torch.tensor([[h.bos if h.bos is not None else 0]], device=h.model.device))


@dataclass
class Item:
    where: str
    prefix: str
    suffix: Optional[str] = None


def items(call) -> list:
    """Pairs the inputs: each prefix with the suffix input right after it."""
    call.only("text", what="code-completion")
    out: list = []
    for inp in call.inputs:
        role = (inp.role or "").strip().lower()
        if role in ("", "prefix", "code", "prompt"):
            out.append(Item(inp.where, inp.text))
        elif role == "suffix":
            if out and out[-1].suffix is None:
                out[-1].suffix = inp.text
            else:
                out.append(Item(inp.where, "", inp.text))
        else:
            raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: role '{inp.role}' is not one of code-completion's "
                                                  "roles: '' or 'prefix' (code before the cursor), 'suffix' (after it)")
    return out


def prompt_ids(h: Coder, item: Item, budget: int) -> list:
    """The model's prompt as token ids: BOS?, then the FIM layout (or the prefix alone), within `budget` tokens."""
    tok = h.tokenizer
    p = tok.encode(item.prefix, add_special_tokens=False) if item.prefix else []
    if item.suffix is None:
        room = budget - (h.bos is not None)
        return ([h.bos] if h.bos is not None else []) + p[max(0, len(p) - room):]
    if h.fim is None:
        looked = ", ".join(sorted({c.prefix for c in FIM_CONVENTIONS}))
        raise WorkerError("FAILED_PRECONDITION", f"{item.where}: model '{h.model_id}' has no fill-in-the-middle "
                                                 f"tokens (looked for {looked} "
                                                 "in its vocabulary), so it cannot fill between a prefix and a suffix: "
                                                 "send the prefix alone for plain completion, or use a FIM code model")
    c = h.fim
    ids = tok.convert_tokens_to_ids
    s = tok.encode(item.suffix, add_special_tokens=False) if item.suffix else []
    room = budget - (h.bos is not None) - (3 if c.middle else 2)
    keep_s = min(len(s), max(room // 4, room - len(p)))
    keep_p = min(len(p), room - keep_s)
    p, s = p[len(p) - keep_p:] if keep_p > 0 else [], s[:keep_s]
    head = [h.bos] if h.bos is not None else []
    if c.order == "spm":
        return head + [ids(c.suffix)] + s + [ids(c.prefix)] + p + ([ids(c.middle)] if c.middle else [])
    return head + [ids(c.prefix)] + p + [ids(c.suffix)] + s + ([ids(c.middle)] if c.middle else [])


def decode(h: Coder, new: list) -> str:
    """The completion's text; decoded after an anchor token so that a leading space is kept (SentencePiece)."""
    tok = h.tokenizer
    plain = tok.decode(new, skip_special_tokens=True)
    if not h.anchor:
        return plain
    base = tok.decode(h.anchor, skip_special_tokens=True)
    both = tok.decode(h.anchor + new, skip_special_tokens=True)
    return both[len(base):] if base and both.startswith(base) else plain


def run(h: Coder, call) -> list:
    import torch
    work = items(call)
    n = call.int_opt("max_new_tokens", 64, 1, 4096)
    temp = bounded_option(call.options, "temperature", 0.0, 0.0, 5.0, float)
    top_p = bounded_option(call.options, "top_p", 1.0, 0.01, 1.0, float)
    seed = call.int_opt("seed", 0)
    stop = call.options.get("stop", "")
    budget = h.limit - n
    if budget < 8:
        raise WorkerError("INVALID_ARGUMENT", f"max_new_tokens={n} leaves no room for the prompt in model "
                                              f"'{h.model_id}''s {h.limit}-token context: lower it")
    kw: dict = dict(max_new_tokens=n, eos_token_id=h.stop_ids or None, stopping_criteria=stopping(call),
                    pad_token_id=h.tokenizer.pad_token_id if h.tokenizer.pad_token_id is not None
                    else (h.stop_ids[0] if h.stop_ids else 0))
    kw.update(dict(do_sample=True, temperature=temp, top_p=top_p) if temp > 0 else dict(do_sample=False))
    outs = []
    for item in work:
        call.check()
        ids = prompt_ids(h, item, budget)
        if not ids:
            raise WorkerError("INVALID_ARGUMENT", f"{item.where}: the prefix has no tokens to continue")
        x = torch.tensor([ids], device=h.model.device)
        # the seed is process-global: one sampled completion at a time (greedy ones run concurrently)
        with torch.inference_mode(), (h.lock if temp > 0 else contextlib.nullcontext()):
            if temp > 0:
                torch.manual_seed(seed)
            y = h.model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kw)
        call.check()
        new = y[0, len(ids):].tolist()
        for i, t in enumerate(new):
            if t in h.stop_ids:
                new = new[:i]
                break
        text = decode(h, new)
        if stop and stop in text:
            text = text[:text.index(stop)]
        outs.append(X.PipelineOutput(kind="text", text=text, token_ids=new))
    return outs
