"""florence2 (Florence-2): the native transformers model (model_type `florence2`,
Florence2ForConditionalGeneration + Florence2Processor; no remote code). One task per request, run on
every image input: one output per image, in input order, with `task` = the task token.

The task: option task ("<OD>", "OD" or "od"), or a text input that starts with the task token
("<CAPTION_TO_PHRASE_GROUNDING>a red car"); the text input (after the token) is the task's input.
No task: <CAPTION>. Typed outputs, coordinates in pixels of the input image:
  text                <CAPTION> <DETAILED_CAPTION> <MORE_DETAILED_CAPTION> <OCR> <REGION_TO_CATEGORY>
                      <REGION_TO_DESCRIPTION> <REGION_TO_OCR>
  boxes (+ label)     <OD> <DENSE_REGION_CAPTION> <REGION_PROPOSAL> <CAPTION_TO_PHRASE_GROUNDING>
                      <OPEN_VOCABULARY_DETECTION> (that one may answer polygons instead)
  quad_boxes (+ text) <OCR_WITH_REGION>
  polygons (+ label)  <REFERRING_EXPRESSION_SEGMENTATION> <REGION_TO_SEGMENTATION>
For the structured tasks `text` holds the generated text itself (locations as <loc_N>, 0..999 of the
image's width / height). Region inputs are written as location tokens, e.g. "<loc_100><loc_200><loc_300><loc_400>".
Options: task, max_new_tokens (256, 1..4096), num_beams (1, 1..16).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from protos import pythonml_pb2 as X
from workers.context import WorkerError
from workers.hf.pipelines.common import auto, gen_kwargs, stopping
from workers.hf.pipelines.registry import read_config

# task -> (kind of answer, takes an input text)
TASKS = {
    "<CAPTION>": ("text", False), "<DETAILED_CAPTION>": ("text", False), "<MORE_DETAILED_CAPTION>": ("text", False),
    "<OCR>": ("text", False), "<OCR_WITH_REGION>": ("quads", False),
    "<OD>": ("boxes", False), "<DENSE_REGION_CAPTION>": ("boxes", False), "<REGION_PROPOSAL>": ("boxes", False),
    "<CAPTION_TO_PHRASE_GROUNDING>": ("boxes", True), "<OPEN_VOCABULARY_DETECTION>": ("boxes", True),
    "<REFERRING_EXPRESSION_SEGMENTATION>": ("polygons", True), "<REGION_TO_SEGMENTATION>": ("polygons", True),
    "<REGION_TO_CATEGORY>": ("text", True), "<REGION_TO_DESCRIPTION>": ("text", True),
    "<REGION_TO_OCR>": ("text", True),
}
# the post-processor's parse rules each task needs (real checkpoints ship them in processor_config.json)
PARSE_RULES = ("pure_text", "ocr", "description_with_bboxes", "bboxes", "phrase_grounding", "polygons",
               "description_with_polygons", "description_with_bboxes_or_polygons")


@dataclass
class Florence2:
    model: Any
    processor: Any
    device: str


def load(lc) -> Florence2:
    cfg = read_config(lc.path)
    mt = cfg.get("model_type", "")
    if mt != "florence2":
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' at {lc.path} is a '{mt or 'unknown'}' model, not "
                                                 "Florence-2 (config.json model_type 'florence2')")
    try:
        m = auto("Florence2ForConditionalGeneration", lc, "a Florence-2 model", dtype=lc.dtype)
        proc = auto("AutoProcessor", lc, "a Florence-2 processor")
    except WorkerError as exc:
        if cfg.get("auto_map"):   # microsoft/Florence-2-*: the remote-code layout
            raise WorkerError(exc.code, exc.message + "; this folder is the remote-code layout of Florence-2 "
                                                      "(config.json auto_map), and the service runs no remote code: "
                                                      "use a transformers-native conversion (model_type florence2 "
                                                      "with a florence_vision vision_config)") from None
        raise
    if not hasattr(proc, "post_process_generation"):
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' at {lc.path}: its processor is "
                                                 f"{type(proc).__name__}, not a Florence2Processor")
    rules = proc.post_processor.parse_task_config
    for r in PARSE_RULES:
        rules.setdefault(r, {})
    return Florence2(m.to(lc.device).eval(), proc, lc.device)


def warm_up(h: Florence2) -> None:
    from PIL import Image
    _generate(h, Image.new("RGB", (32, 32)), "<CAPTION>", dict(max_new_tokens=1, num_beams=1, do_sample=False), None)


def _canonical(task: str) -> str:
    t = task.strip().upper().replace("-", "_").replace(" ", "_")
    return t if t.startswith("<") else f"<{t}>"


def task_of(call) -> tuple[str, str]:
    """(task token, its input text) from option task and the text input; INVALID_ARGUMENT naming what is wrong."""
    texts = call.of_kind("text")
    if len(texts) > 1:
        raise WorkerError("INVALID_ARGUMENT", f"florence2 takes at most one text input (the task, or the task's input); "
                                              f"got {len(texts)}")
    text = texts[0].text.strip() if texts else ""
    task = _canonical(call.options["task"]) if (call.options.get("task") or "").strip() else ""
    head = re.match(r"<[A-Z0-9_]+>", text)   # a task token (region inputs are lower case: <loc_N>)
    if head:
        token = head.group()
        if task and task != token:
            raise WorkerError("INVALID_ARGUMENT", f"option task is {task} but {texts[0].where} starts with {token}")
        task, text = token, text[len(token):].strip()
    task = task or "<CAPTION>"
    if task not in TASKS:
        raise WorkerError("INVALID_ARGUMENT", f"florence2 task '{task}' is unknown; use one of {', '.join(TASKS)}")
    needs_input = TASKS[task][1]
    if needs_input and not text:
        raise WorkerError("INVALID_ARGUMENT", f"florence2 task {task} needs its input: send a text input (e.g. "
                                              f"'{task}a red car' or the phrase alone with option task={task})")
    if not needs_input and text:
        raise WorkerError("INVALID_ARGUMENT", f"florence2 task {task} takes no input text; got {text[:80]!r}")
    return task, text


def _generate(h: Florence2, image, prompt: str, kw: dict, call) -> str:
    import torch
    enc = h.processor(images=image, text=prompt, return_tensors="pt").to(h.device)
    enc["pixel_values"] = enc["pixel_values"].to(h.model.dtype)
    extra = {"stopping_criteria": stopping(call)} if call is not None else {}
    with torch.inference_mode():
        out = h.model.generate(**enc, **kw, **extra)
    if call is not None:
        call.check()
    return h.processor.batch_decode(out, skip_special_tokens=False)[0]


def _clean(text: str) -> str:
    for s in ("</s>", "<s>", "<pad>"):
        text = text.replace(s, "")
    return text.strip()


def output(task: str, generated: str, image_size: tuple, processor) -> X.PipelineOutput:
    """The typed output of one image from the generated text (post_process_generation's answer)."""
    parsed = processor.post_process_generation(generated, task=task, image_size=image_size)[task]
    o = X.PipelineOutput(kind="image", task=task)
    kind = TASKS[task][0]
    if isinstance(parsed, str):
        o.text = parsed
        return o
    o.text = _clean(generated)
    if kind == "quads":
        for quad, label in zip(parsed.get("quad_boxes", []), parsed.get("labels", [])):
            o.quad_boxes.add(label=str(label), points=[float(v) for v in quad])
        return o
    boxes = parsed.get("bboxes", [])
    labels = parsed.get("labels", parsed.get("bboxes_labels", [""] * len(boxes)))
    scores = parsed.get("scores", [0.0] * len(boxes))
    for b, label, score in zip(boxes, labels, scores):
        o.boxes.add(x_min=float(b[0]), y_min=float(b[1]), x_max=float(b[2]), y_max=float(b[3]), label=str(label),
                    score=float(score))
    polys = parsed.get("polygons", [])
    plabels = parsed.get("labels" if kind == "polygons" else "polygons_labels", [""] * len(polys))
    for inst, label in zip(polys, plabels):
        for poly in inst:   # an object may have several polygons
            o.polygons.add(label=str(label), points=[float(v) for v in poly])
    return o


def run(h: Florence2, call) -> list:
    call.only("image", "text", what="florence2")
    images = call.of_kind("image")
    if not images:
        raise WorkerError("INVALID_ARGUMENT", "florence2 needs at least one image input")
    task, text = task_of(call)
    kw = gen_kwargs(call, 256)
    outs = []
    for inp in images:
        call.check()
        img = call.image(inp)
        generated = _generate(h, img, task + text, kw, call)
        outs.append(output(task, generated, img.size, h.processor))
    return outs
