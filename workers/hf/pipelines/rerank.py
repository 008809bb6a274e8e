"""text-ranking (cross-encoder reranking): one text input with role 'query' (or the first text input)
against the others (documents). Output: one PipelineOutput whose `scores` follow the documents' order
and whose `labels` are the documents' indices (as strings) best first. Option activation: sigmoid
(default for one-logit models), none."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protos import pythonml_pb2 as X
from workers.context import WorkerError
from workers.hf.pipelines.common import auto, model


@dataclass
class CrossEncoder:
    model: Any
    tokenizer: Any
    device: str


def load(lc) -> CrossEncoder:
    return CrossEncoder(model("AutoModelForSequenceClassification", lc, "a cross-encoder"),
                        auto("AutoTokenizer", lc, "a tokenizer"), lc.device)


def warm_up(h: CrossEncoder) -> None:
    _scores(h, "q", ["d"], "none")


def _scores(h, query, docs, activation):
    import torch
    enc = h.tokenizer([query] * len(docs), docs, padding=True, truncation=True, return_tensors="pt").to(h.device)
    with torch.inference_mode():
        lg = h.model(**enc).logits.float()
    s = lg[:, 0] if lg.shape[-1] == 1 else lg.softmax(-1)[:, -1]
    if lg.shape[-1] == 1 and activation == "sigmoid":
        s = s.sigmoid()
    return s.tolist()


def run(h: CrossEncoder, call) -> list:
    call.only("text", what="text-ranking")
    queries = [i for i in call.inputs if i.role == "query"] or call.inputs[:1]
    if len(queries) != 1:
        raise WorkerError("INVALID_ARGUMENT", f"text-ranking takes one query; got {len(queries)} inputs with role 'query'")
    q = queries[0]
    docs = [i for i in call.inputs if i is not q]
    if not docs:
        raise WorkerError("INVALID_ARGUMENT", "text-ranking needs documents: send the query then one text input per document")
    act = call.options.get("activation", "sigmoid").lower()
    if act not in ("sigmoid", "none"):
        raise WorkerError("INVALID_ARGUMENT", f"option activation '{act}': use sigmoid or none")
    scores = []
    bs = call.int_opt("batch_size", 32, 1, 1024)
    for k in range(0, len(docs), bs):
        call.check()
        scores += _scores(h, q.text, [d.text for d in docs[k:k + bs]], act)
    out = X.PipelineOutput(kind="text", scores=scores)
    for j in sorted(range(len(docs)), key=lambda j: -scores[j]):
        out.labels.add(label=str(j), score=scores[j])
    return [out]
