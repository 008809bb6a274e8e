"""token-classification (NER, entity extraction): a token-classification model labels each token; tokens are
grouped into entities with character offsets into the input text.

Inputs: text inputs. One output per input: `entities` in text order, each with label, score, start, end
(characters, i.e. Unicode code points, of the input; end exclusive) and text (= input[start:end]).
Options:
- aggregation: simple (default: B-/I- tags grouped into one entity per span), first / average / max (one
  label per word: its first token's, the tokens' average, or its best-scoring token's), none (one entity per
  token, with its raw B-/I- label);
- ignore_labels: comma-separated labels left out (default "O");
- stride: tokens shared by consecutive windows when a text is longer than the model reads at once (default
  min(64, a quarter of the window)); such a text is read window by window (not with aggregation none, which
  answers INVALID_ARGUMENT for it).
The model needs a fast tokenizer (tokenizer.json): offsets come from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protos import pythonml_pb2 as X
from workers.context import WorkerError
from workers.hf.pipelines.common import auto, model

AGGREGATIONS = ("simple", "first", "average", "max", "none")
_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl", "data2vec-text")


@dataclass
class Tagger:
    pipe: Any                      # transformers.TokenClassificationPipeline
    tokenizer: Any
    model: Any
    window: int                    # tokens the model reads at once (special tokens included)


def load(lc) -> Tagger:
    from transformers import TokenClassificationPipeline
    from workers.hf.generation import context_limit
    m = model("AutoModelForTokenClassification", lc, "a token-classification (NER) model")
    tok = auto("AutoTokenizer", lc, "a tokenizer")
    if not getattr(tok, "is_fast", False):
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' has no fast tokenizer (tokenizer.json): "
                                                 "token-classification needs it for the entities' character offsets")
    limit = context_limit(m) or 512
    if getattr(m.config, "model_type", "") in _POSITION_OFFSET_TYPES:
        limit -= 2                 # their position ids start after the padding index
    if not 0 < (tok.model_max_length or 0) <= limit:
        tok.model_max_length = limit
    try:
        # device given: left out, transformers picks device 0 (cuda:0 whenever CUDA exists, even for the cpu worker)
        pipe = TokenClassificationPipeline(model=m, tokenizer=tok, device=m.device)
    except (ValueError, TypeError) as exc:
        raise lc.fail("a token-classification pipeline", exc) from None
    return Tagger(pipe, tok, m, int(tok.model_max_length))


def warm_up(h: Tagger) -> None:
    h.pipe("warm up", aggregation_strategy="simple")


def _entities(h: Tagger, text: str, where: str, aggregation: str, ignore: list, stride: int) -> list:
    kw: dict = dict(aggregation_strategy=aggregation, ignore_labels=ignore)
    n = len(h.tokenizer(text, add_special_tokens=True)["input_ids"])
    if n > h.window:
        if aggregation == "none":
            raise WorkerError("INVALID_ARGUMENT", f"{where}: text is {n} tokens and the model reads {h.window} at "
                                                  "once; aggregation none cannot join windows: use simple, first, "
                                                  "average or max, or send shorter texts")
        kw["stride"] = stride
    found = h.pipe(text, **kw)
    out = []
    for e in sorted(found, key=lambda e: (e["start"], e["end"])):
        start, end = int(e["start"]), int(e["end"])
        out.append(X.Entity(label=str(e.get("entity_group", e.get("entity", ""))), score=float(e["score"]),
                            start=start, end=end, text=text[start:end]))
    return out


def run(h: Tagger, call) -> list:
    call.only("text", what="token-classification")
    aggregation = (call.options.get("aggregation") or call.options.get("aggregation_strategy") or "simple").lower()
    if aggregation not in AGGREGATIONS:
        raise WorkerError("INVALID_ARGUMENT", f"option aggregation '{aggregation}' is not one of {list(AGGREGATIONS)}")
    raw = call.options.get("ignore_labels")
    ignore = ["O"] if raw is None or raw == "" else [s.strip() for s in raw.split(",") if s.strip()]
    stride = call.int_opt("stride", min(64, h.window // 4), 0, max(0, h.window // 2))
    outs = []
    for inp in call.inputs:
        call.check()
        outs.append(X.PipelineOutput(kind="text", entities=_entities(h, inp.text, inp.where, aggregation, ignore,
                                                                     stride)))
    return outs
