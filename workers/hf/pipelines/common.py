"""Helpers shared by the pipeline modules: processors, label lists, output messages."""
from __future__ import annotations

from typing import Any

from protos import pythonml_pb2 as X
from workers.context import WorkerError


def auto(cls_name: str, lc, what: str, **kw) -> Any:
    import transformers
    cls = getattr(transformers, cls_name)
    try:
        return cls.from_pretrained(str(lc.path), local_files_only=True, **kw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise lc.fail(what, exc) from None


def model(cls_name: str, lc, what: str):
    m = auto(cls_name, lc, what, dtype=lc.dtype)
    return m.to(lc.device).eval()


def labels_out(scores, names, top_k: int = 0) -> X.PipelineOutput:
    pairs = sorted(zip(names, (float(s) for s in scores)), key=lambda p: -p[1])
    if top_k:
        pairs = pairs[:top_k]
    out = X.PipelineOutput()
    for n, s in pairs:
        out.labels.add(label=str(n), score=s)
    return out


def id2label(config, n: int) -> list:
    m = getattr(config, "id2label", None) or {}
    return [str(m.get(i, m.get(str(i), f"LABEL_{i}"))) for i in range(n)]


def need_labels(call, what: str) -> list:
    labels = call.labels()
    if not labels:
        raise WorkerError("INVALID_ARGUMENT", f"{what} needs candidate labels: set candidate_labels (or "
                                              "options candidate_labels='a,b,c', or text inputs with role 'label')")
    if len(labels) > 1024:
        raise WorkerError("INVALID_ARGUMENT", f"{len(labels)} candidate labels; the limit is 1024")
    return labels


def gen_kwargs(call, default_new: int = 64) -> dict:
    return dict(max_new_tokens=call.int_opt("max_new_tokens", default_new, 1, 4096),
                num_beams=call.int_opt("num_beams", 1, 1, 16), do_sample=False)


def stopping(call):
    """A transformers StoppingCriteria that ends generation on cancel or deadline (checked per step)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            ctx = call.ctx
            return bool(ctx is not None and (ctx.cancelled.is_set() or
                                             (ctx.time_left() is not None and ctx.time_left() < 0)))
    return StoppingCriteriaList([Stop()])
