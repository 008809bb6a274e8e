"""image-classification: softmax over the model's labels, best first (option top_k, default 5)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.hf.pipelines.common import auto, id2label, labels_out, model


@dataclass
class ImageClassifier:
    model: Any
    processor: Any
    device: str


def load(lc) -> ImageClassifier:
    return ImageClassifier(model("AutoModelForImageClassification", lc, "an image classifier"),
                           auto("AutoImageProcessor", lc, "an image processor"), lc.device)


def warm_up(h: ImageClassifier) -> None:
    from PIL import Image
    _classify(h, [Image.new("RGB", (32, 32))])


def _classify(h, images):
    import torch
    px = h.processor(images=images, return_tensors="pt")["pixel_values"].to(h.device, dtype=h.model.dtype)
    with torch.inference_mode():
        logits = h.model(pixel_values=px).logits.float()
    return logits.softmax(-1) if h.model.config.problem_type != "multi_label_classification" else logits.sigmoid()


def run(h: ImageClassifier, call) -> list:
    call.only("image", what="image-classification")
    top_k = call.int_opt("top_k", 5, 1, 100000)
    probs = _classify(h, [call.image(i) for i in call.inputs])
    names = id2label(h.model.config, probs.shape[-1])
    outs = []
    for p in probs:
        o = labels_out(p.tolist(), names, top_k)
        o.kind = "image"
        outs.append(o)
    return outs
