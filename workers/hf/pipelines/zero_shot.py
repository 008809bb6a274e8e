"""zero-shot-classification: an NLI model scores "premise = text, hypothesis = template(label)".
Single-label (default): softmax of the entailment logits over labels; option multi_label=true:
entailment vs contradiction per label. Labels come from candidate_labels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.options import as_bool
from workers.context import WorkerError
from workers.hf.pipelines.common import auto, labels_out, model, need_labels


@dataclass
class NLI:
    model: Any
    tokenizer: Any
    device: str
    entail: int
    contra: int


def load(lc) -> NLI:
    m = model("AutoModelForSequenceClassification", lc, "an NLI (zero-shot) classifier")
    names = {str(v).lower(): int(k) for k, v in (m.config.id2label or {}).items()}
    entail = next((i for n, i in names.items() if n.startswith("entail")), None)
    if entail is None:
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' has no 'entailment' label in id2label "
                                                 f"({sorted(names)}): zero-shot classification needs an NLI model")
    contra = next((i for n, i in names.items() if n.startswith("contra")), -1)
    return NLI(m, auto("AutoTokenizer", lc, "a tokenizer"), lc.device, entail, contra)


def warm_up(h: NLI) -> None:
    _logits(h, ["warm up"], ["a test"])


def _logits(h: NLI, premises, hypotheses):
    import torch
    enc = h.tokenizer(premises, hypotheses, padding=True, truncation=True, return_tensors="pt").to(h.device)
    with torch.inference_mode():
        return h.model(**enc).logits.float()


def run(h: NLI, call) -> list:
    call.only("text", what="zero-shot-classification")
    labels = need_labels(call, "zero-shot-classification")
    template = call.options.get("hypothesis_template") or "This example is {}."
    if "{}" not in template:
        raise WorkerError("INVALID_ARGUMENT", f"hypothesis_template '{template}' has no '{{}}' for the label")
    multi = as_bool(call.options.get("multi_label"), False, "multi_label")
    outs = []
    for inp in [i for i in call.inputs if i.role != "label"]:
        call.check()
        lg = _logits(h, [inp.text] * len(labels), [template.format(x) for x in labels])
        if multi and h.contra >= 0:
            scores = lg[:, [h.contra, h.entail]].softmax(-1)[:, 1]
        else:
            scores = lg[:, h.entail].softmax(0)
        o = labels_out(scores.tolist(), labels)
        o.kind = "text"
        outs.append(o)
    return outs
