"""janus (DeepSeek Janus / Janus-Pro, understanding): image + text chat with the native transformers
JanusForConditionalGeneration (model_type `janus`, generation_mode "text"; no remote code).

Inputs, output, streaming and options are those of image-text-to-text (vl_chat.py). Janus's other mode,
image generation (option generation_mode=image), is not served: UNIMPLEMENTED naming it.
"""
from __future__ import annotations

from workers.context import WorkerError
from workers.hf.pipelines import vl_chat
from workers.hf.pipelines.registry import read_config


def load(lc) -> vl_chat.VLChat:
    mt = read_config(lc.path).get("model_type", "")
    if mt != "janus":
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' at {lc.path} is a '{mt or 'unknown'}' model, not "
                                                 "Janus (config.json model_type 'janus'); load it as image-text-to-text")
    return vl_chat.load(lc, name="janus", what="a Janus model", gen_extra={"generation_mode": "text"})


warm_up = vl_chat.warm_up


def run(h: vl_chat.VLChat, call) -> list:
    mode = (call.options.get("generation_mode") or "text").strip().lower()
    if mode != "text":
        raise WorkerError("UNIMPLEMENTED", f"janus generation_mode '{mode}' (image generation) is not served; the "
                                           "service runs Janus for understanding only (generation_mode text)")
    return vl_chat.run(h, call)
