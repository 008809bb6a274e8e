"""image-text-embeddings (CLIP-style): one embedding per input (text or image); each image output also
carries its similarity to every text input (`scores`) and, with candidate labels, zero-shot labels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protos import pythonml_pb2 as X
from workers.hf.pipelines.common import auto, labels_out, model


@dataclass
class Clip:
    model: Any
    tokenizer: Any
    image_processor: Any
    device: str


def load(lc) -> Clip:
    return Clip(model("AutoModel", lc, "an image-text (CLIP) model"), auto("AutoTokenizer", lc, "a CLIP tokenizer"),
                auto("AutoImageProcessor", lc, "a CLIP image processor"), lc.device)


def warm_up(h: Clip) -> None:
    _text(h, ["warm up"])


def _text(h: Clip, texts):
    import torch
    enc = h.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(h.device)
    with torch.inference_mode():
        f = h.model.get_text_features(**enc)
    f = getattr(f, "pooler_output", f)
    return torch.nn.functional.normalize(f.float(), dim=-1)


def _image(h: Clip, images):
    import torch
    px = h.image_processor(images=images, return_tensors="pt")["pixel_values"].to(h.device, dtype=h.model.dtype)
    with torch.inference_mode():
        f = h.model.get_image_features(pixel_values=px)
    f = getattr(f, "pooler_output", f)
    return torch.nn.functional.normalize(f.float(), dim=-1)


def run(h: Clip, call) -> list:
    import torch
    call.only("text", "image", what="image-text-embeddings")
    texts = [i for i in call.inputs if i.kind == "text" and i.role != "label"]
    images = [i for i in call.inputs if i.kind == "image"]
    labels = call.labels()
    emb: dict = {}
    if texts:
        for i, v in zip(texts, _text(h, [t.text for t in texts])):
            emb[i.index] = v
    call.check()
    if images:
        for i, v in zip(images, _image(h, [call.image(i) for i in images])):
            emb[i.index] = v
    label_vecs = _text(h, [f"{call.options.get('hypothesis_template', '{}')}".format(x) for x in labels]) if labels else None
    scale = float(h.model.logit_scale.detach().exp()) if hasattr(h.model, "logit_scale") else 100.0
    outs = []
    for inp in call.inputs:
        if inp.index not in emb:
            continue
        v = emb[inp.index]
        o = X.PipelineOutput(kind=inp.kind, embedding=v.tolist())
        if inp.kind == "image":
            if texts:
                o.scores.extend((torch.stack([emb[t.index] for t in texts]) @ v).tolist())
            if label_vecs is not None:
                probs = torch.softmax(scale * (label_vecs @ v), dim=0)
                o.labels.extend(labels_out(probs.tolist(), labels).labels)
        outs.append(o)
    return outs
