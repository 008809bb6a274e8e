"""translation / text2text-generation: encoder-decoder generation per text input.
Options: max_new_tokens (64), num_beams (1), prefix (prepended, e.g. 'translate English to German: '),
src_lang / tgt_lang (tokenizers that have them, e.g. NLLB, M2M, mBART)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protos import pythonml_pb2 as X
from workers.context import WorkerError
from workers.hf.pipelines.common import auto, gen_kwargs, model, stopping


@dataclass
class Seq2Seq:
    model: Any
    tokenizer: Any
    device: str


def load(lc) -> Seq2Seq:
    return Seq2Seq(model("AutoModelForSeq2SeqLM", lc, "an encoder-decoder (translation) model"),
                   auto("AutoTokenizer", lc, "a tokenizer"), lc.device)


def warm_up(h: Seq2Seq) -> None:
    import torch
    enc = h.tokenizer(["warm up"], return_tensors="pt").to(h.device)
    with torch.inference_mode():
        h.model.generate(**enc, max_new_tokens=1)


def run(h: Seq2Seq, call) -> list:
    import torch
    call.only("text", what="translation")
    kw = gen_kwargs(call)
    tok = h.tokenizer
    src, tgt = call.options.get("src_lang"), call.options.get("tgt_lang")
    if src:
        if not hasattr(tok, "src_lang"):
            raise WorkerError("INVALID_ARGUMENT", "option src_lang: this model's tokenizer has no source language")
        tok.src_lang = src
    if tgt:
        tid = tok.convert_tokens_to_ids(tgt)
        if tid is None or tid == tok.unk_token_id:
            raise WorkerError("INVALID_ARGUMENT", f"option tgt_lang '{tgt}' is not a token of this model's tokenizer")
        kw["forced_bos_token_id"] = tid
    prefix = call.options.get("prefix", "")
    enc = tok([prefix + i.text for i in call.inputs], padding=True, truncation=True, return_tensors="pt").to(h.device)
    with torch.inference_mode():
        ids = h.model.generate(**enc, stopping_criteria=stopping(call), **kw)
    call.check()
    return [X.PipelineOutput(kind="text", text=t) for t in tok.batch_decode(ids, skip_special_tokens=True)]
