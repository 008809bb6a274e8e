"""image-to-text (captioning): a VisionEncoderDecoder or an image-text-to-text model (e.g. BLIP), with an
optional text prompt (one text input in the same request) used for every image. One output per image.
Options: max_new_tokens (64), num_beams (1). Conversations with images are image-text-to-text (vl_chat.py);
a Florence-2 or Janus folder asked for as image-to-text is served by its own entry (registry.refine)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from protos import pythonml_pb2 as X
from workers.hf.pipelines.common import auto, gen_kwargs, stopping
from workers.hf.pipelines.registry import read_config


@dataclass
class ImageToText:
    model: Any
    tokenizer: Any
    image_processor: Any
    processor: Optional[Any]
    device: str


def load(lc) -> ImageToText:
    cfg = read_config(lc.path)
    if cfg.get("model_type") == "vision-encoder-decoder":
        m = auto("VisionEncoderDecoderModel", lc, "a vision encoder-decoder (captioning) model", dtype=lc.dtype)
        return ImageToText(m.to(lc.device).eval(), auto("AutoTokenizer", lc, "a tokenizer"),
                           auto("AutoImageProcessor", lc, "an image processor"), None, lc.device)
    m = auto("AutoModelForImageTextToText", lc, "an image-text-to-text model", dtype=lc.dtype,
             trust_remote_code=False)
    proc = auto("AutoProcessor", lc, "its processor")
    return ImageToText(m.to(lc.device).eval(), getattr(proc, "tokenizer", None), None, proc, lc.device)


def warm_up(h: ImageToText) -> None:
    from PIL import Image
    _generate(h, Image.new("RGB", (32, 32)), "", {"max_new_tokens": 1}, None)


def _generate(h: ImageToText, image, prompt: str, kw: dict, call) -> str:
    import torch
    extra = {"stopping_criteria": stopping(call)} if call is not None else {}
    with torch.inference_mode():
        if h.processor is None:
            px = h.image_processor(images=image, return_tensors="pt")["pixel_values"].to(h.device, dtype=h.model.dtype)
            if prompt:
                ids = h.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(h.device)
                out = h.model.generate(pixel_values=px, decoder_input_ids=ids, **kw, **extra)
            else:
                out = h.model.generate(pixel_values=px, **kw, **extra)
            return h.tokenizer.decode(out[0], skip_special_tokens=True).strip()
        enc = h.processor(images=image, text=prompt or None, return_tensors="pt").to(h.device)
        out = h.model.generate(**enc, **kw, **extra)
        if "input_ids" in enc and not h.model.config.is_encoder_decoder:
            out = out[:, enc["input_ids"].shape[1]:]
        return h.processor.batch_decode(out, skip_special_tokens=True)[0].strip()


def run(h: ImageToText, call) -> list:
    call.only("image", "text", what="image-to-text")
    prompts = [i.text for i in call.inputs if i.kind == "text"]
    if len(prompts) > 1:
        from workers.context import WorkerError
        raise WorkerError("INVALID_ARGUMENT", f"image-to-text takes at most one text prompt; got {len(prompts)}")
    images = call.of_kind("image")
    if not images:
        from workers.context import WorkerError
        raise WorkerError("INVALID_ARGUMENT", "image-to-text needs at least one image input")
    kw = gen_kwargs(call)
    outs = []
    for inp in images:
        call.check()
        outs.append(X.PipelineOutput(kind="image", text=_generate(h, call.image(inp), prompts[0] if prompts else "",
                                                                   kw, call)))
    return outs
