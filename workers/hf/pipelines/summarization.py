"""summarization: an encoder-decoder model (BART, PEGASUS, T5, ...) writes a summary of each text input.

Loaded as seq2seq.py loads translation models. The model's own summarization settings
(config.task_specific_params["summarization"]: prefix such as T5's 'summarize: ', num_beams, length_penalty,
no_repeat_ngram_size, min_length / max_length) are the defaults; options override them:
max_new_tokens, min_new_tokens, num_beams (1..16), prefix, truncate (default true: a text longer than the
encoder reads keeps its beginning; false answers INVALID_ARGUMENT instead).
One output per text input: `text` = the summary.
"""
from __future__ import annotations

from protos import pythonml_pb2 as X
from common.options import as_bool
from workers.context import WorkerError
from workers.hf.pipelines import seq2seq
from workers.hf.pipelines.common import stopping
from workers.hf.pipelines.seq2seq import Seq2Seq, warm_up  # noqa: F401  (the registry calls warm_up)

DEFAULT_MAX_NEW = 128


def load(lc) -> Seq2Seq:
    return seq2seq.load(lc)


def settings(h: Seq2Seq) -> dict:
    """The model's summarization defaults (task_specific_params), or {}."""
    tsp = getattr(h.model.config, "task_specific_params", None) or {}
    return dict(tsp.get("summarization") or {})


def _input_limit(h: Seq2Seq) -> int:
    n = h.tokenizer.model_max_length or 0
    if 0 < n < 10**7:
        return int(n)
    cfg = h.model.config
    for name in ("max_position_embeddings", "n_positions", "max_source_positions"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return 512


def run(h: Seq2Seq, call) -> list:
    import torch
    call.only("text", what="summarization")
    d = settings(h)
    max_new = call.int_opt("max_new_tokens", int(d.get("max_length") or DEFAULT_MAX_NEW), 1, 4096)
    min_new = call.int_opt("min_new_tokens", min(int(d.get("min_length") or 0), max_new), 0, 4096)
    if min_new > max_new:
        raise WorkerError("INVALID_ARGUMENT", f"min_new_tokens={min_new} is above max_new_tokens={max_new}")
    kw = dict(max_new_tokens=max_new, min_new_tokens=min_new, do_sample=False,
              num_beams=call.int_opt("num_beams", int(d.get("num_beams") or 1), 1, 16))
    for name in ("length_penalty", "early_stopping") if kw["num_beams"] > 1 else ():   # beam-search settings
        if name in d:
            kw[name] = d[name]
    if d.get("no_repeat_ngram_size"):
        kw["no_repeat_ngram_size"] = int(d["no_repeat_ngram_size"])
    prefix = call.options.get("prefix", d.get("prefix") or "")
    truncate = as_bool(call.options.get("truncate"), True, "truncate")
    limit = _input_limit(h)
    texts = [prefix + i.text for i in call.inputs]
    if not truncate:
        for inp, t in zip(call.inputs, texts):
            n = len(h.tokenizer(t)["input_ids"])
            if n > limit:
                raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: text is {n} tokens; model reads {limit}: "
                                                      "send a shorter text or set truncate=true (keeps its beginning)")
    outs = []
    for t in texts:   # one at a time: padding would change what a text's summary is, and cancel works between texts
        call.check()
        enc = h.tokenizer([t], truncation=True, max_length=limit, return_tensors="pt").to(h.device)
        with torch.inference_mode():
            ids = h.model.generate(**enc, stopping_criteria=stopping(call), **kw)
        call.check()
        outs.append(X.PipelineOutput(kind="text", text=h.tokenizer.decode(ids[0], skip_special_tokens=True).strip()))
    return outs
