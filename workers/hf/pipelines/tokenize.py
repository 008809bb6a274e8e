"""tokenization: token ids, token strings and character offsets of each text input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.options import as_bool
from protos import pythonml_pb2 as X
from workers.hf.pipelines.common import auto


@dataclass
class Tok:
    tokenizer: Any


def load(lc) -> Tok:
    return Tok(auto("AutoTokenizer", lc, "a tokenizer"))


def warm_up(h: Tok) -> None:
    h.tokenizer("warm up")


def run(h: Tok, call) -> list:
    call.only("text", what="tokenization")
    special = as_bool(call.options.get("add_special_tokens"), True, "add_special_tokens")
    outs = []
    for inp in call.inputs:
        kw = {"return_offsets_mapping": True} if h.tokenizer.is_fast else {}
        enc = h.tokenizer(inp.text, add_special_tokens=special, **kw)
        ids = list(enc["input_ids"])
        o = X.PipelineOutput(kind="text", token_ids=ids, tokens=h.tokenizer.convert_ids_to_tokens(ids))
        for a, b in enc.get("offset_mapping", []):
            o.offsets.extend([int(a), int(b)])
        if as_bool(call.options.get("decode"), False, "decode"):
            o.text = h.tokenizer.decode(ids, skip_special_tokens=True)
        outs.append(o)
    return outs
