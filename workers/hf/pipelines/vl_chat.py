"""image-text-to-text (vision-language chat; upstream name Multimodal): a conversation of text and image
inputs answered by a native transformers vision-language model (AutoModelForImageTextToText with its
processor's chat template; no remote code).

The inputs, in order, are the conversation. Each input's role is system, user or assistant ("" = user);
consecutive inputs with the same role are one message whose content keeps their order (an image stands
where it was sent). Images belong to user or system turns; the last turn must be the user's.
A model without a chat template (a captioning model) reads only the last user turn, as a plain prompt
(each image at its place as the processor's image token, when it has one).

One output: kind "text", text = the answer (exactly the concatenation of the streamed pieces),
finish_reason ("stop" | "length"), tokens_generated. Through Pipelines/RunStream each decoded piece is
sent as it comes (call.emit). Options: max_new_tokens (256, 1..4096; the model's context bounds it),
temperature (0 = greedy, the default; up to 100), top_p (0..1, 0 = not set).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from protos import pythonml_pb2 as X
from workers.context import WorkerError
from workers.hf.pipelines.common import auto, stopping
from workers.hf.pipelines.registry import bounded_option

ROLES = ("system", "user", "assistant")
MAX_IMAGES = 16
DEFAULT_NEW_TOKENS = 256


@dataclass
class VLChat:
    model: Any
    processor: Any
    tokenizer: Any
    device: str
    name: str                                  # pipeline name used in messages
    templated: bool
    context: Optional[int]
    gen_extra: dict = field(default_factory=dict)   # e.g. Janus: generation_mode="text"


def text_context(model) -> Optional[int]:
    """The language model's context length in tokens, when its config says."""
    cfg = model.config
    try:
        cfg = cfg.get_text_config()
    except AttributeError:
        cfg = getattr(cfg, "text_config", None) or cfg
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def load(lc, name: str = "image-text-to-text", what: str = "an image-text-to-text (vision-language) model",
         gen_extra: Optional[dict] = None) -> VLChat:
    m = auto("AutoModelForImageTextToText", lc, what, dtype=lc.dtype, trust_remote_code=False)
    proc = auto("AutoProcessor", lc, "its processor", trust_remote_code=False)
    if getattr(proc, "image_processor", None) is None:
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' at {lc.path} has no image processor, so it "
                                                 f"cannot read images as {name}; a text-only model is text-generation")
    tok = getattr(proc, "tokenizer", None)
    if tok is None:
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' at {lc.path}: its processor has no tokenizer")
    m = m.to(lc.device).eval()
    return VLChat(m, proc, tok, lc.device, name, bool(getattr(proc, "chat_template", None)), text_context(m),
                  dict(gen_extra or {}))


def warm_up(h: VLChat) -> None:
    from PIL import Image
    msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (32, 32))},
                                         {"type": "text", "text": "Describe the image."}]}]
    _generate(h, msgs, [Image.new("RGB", (32, 32))], dict(max_new_tokens=1, do_sample=False), None)


# ---- request -> conversation -------------------------------------------------------------------------
def conversation(call, name: str, max_images: int = MAX_IMAGES) -> tuple[list, list]:
    """(messages with content lists, decoded images in order) from the request's inputs; INVALID_ARGUMENT
    naming the input for a role that is not a chat role, an image in an assistant turn, too many images,
    or a conversation that does not end with the user's turn."""
    call.only("text", "image", what=name)
    roles = []
    for inp in call.inputs:
        role = (inp.role or "user").strip().lower()
        if role not in ROLES:
            raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: role '{inp.role}' is not a chat role; use system, "
                                                  f"user or assistant ('' = user)")
        if inp.kind == "image" and role == "assistant":
            raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: an image in an assistant turn; images go in user "
                                                  "(or system) turns")
        roles.append(role)
    n_images = len(call.of_kind("image"))
    if n_images > max_images:
        raise WorkerError("INVALID_ARGUMENT", f"{n_images} images in one conversation; the limit is {max_images}")
    if roles[-1] != "user":
        raise WorkerError("INVALID_ARGUMENT", f"the conversation ends with the {roles[-1]}'s turn ({call.inputs[-1].where}); "
                                              "end it with the user's turn to be answered")
    messages: list = []
    images: list = []
    for inp, role in zip(call.inputs, roles):
        if inp.kind == "image":
            img = call.image(inp)
            images.append(img)
            part = {"type": "image", "image": img}
        else:
            part = {"type": "text", "text": inp.text}
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].append(part)
        else:
            messages.append({"role": role, "content": [part]})
    return messages, images


def generation_options(call, default_new: int = DEFAULT_NEW_TOKENS) -> dict:
    from workers.hf.generation import MAX_TEMPERATURE
    kw = dict(max_new_tokens=call.int_opt("max_new_tokens", default_new, 1, 4096))
    t = bounded_option(call.options, "temperature", 0.0, 0.0, MAX_TEMPERATURE, float)
    top_p = bounded_option(call.options, "top_p", 0.0, 0.0, 1.0, float)
    if t > 0:
        kw.update(do_sample=True, temperature=t, top_p=top_p or 1.0)
    else:
        kw.update(do_sample=False)
    return kw


# ---- generation ---------------------------------------------------------------------------------------
class PieceStreamer:
    """A transformers streamer: generate() puts the prompt first (skipped), then each new token; every
    piece of printable text goes to `emit` (when set) and is kept, so the answer is their concatenation."""

    def __init__(self, tokenizer, prompt_ids: list, emit=None):
        from workers.hf.generation import IncrementalDetokenizer
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.emit = emit
        self.pieces: list = []
        self.tokens = 0
        self._prompt = True

    def _out(self, text: str) -> None:
        if text:
            self.pieces.append(text)
            if self.emit is not None:
                self.emit(text)

    def put(self, value) -> None:
        if self._prompt:
            self._prompt = False
            return
        for t in value.reshape(-1).tolist():
            self.tokens += 1
            self._out(self.detok.add(int(t)))

    def end(self) -> None:
        self._out(self.detok.flush())

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _encode(h: VLChat, messages: list, images: list):
    if h.templated:
        try:
            return h.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, return_tensors="pt")
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise WorkerError("INVALID_ARGUMENT", f"{h.name}: the model's chat template or processor rejected this "
                                                  f"conversation: {type(exc).__name__}: {exc}") from None
        except Exception as exc:   # jinja2 TemplateError (raise_exception in a template)
            if type(exc).__module__.startswith("jinja2"):
                raise WorkerError("INVALID_ARGUMENT", f"{h.name}: the model's chat template rejected this "
                                                      f"conversation: {exc}") from None
            raise
    last = messages[-1]["content"]           # no template: the last user turn is the prompt
    marker = getattr(h.processor, "image_token", None)
    prompt = "".join(p["text"] if p["type"] == "text" else (marker or "") for p in last)
    images = [p["image"] for p in last if p["type"] == "image"]
    try:
        return h.processor(images=images or None, text=prompt or None, return_tensors="pt")
    except (ValueError, TypeError) as exc:
        raise WorkerError("INVALID_ARGUMENT", f"{h.name}: the model's processor rejected these inputs "
                                              f"(it has no chat template: one plain prompt): {exc}") from None


def _generate(h: VLChat, messages: list, images: list, kw: dict, call, emit=None):
    import torch
    enc = _encode(h, messages, images).to(h.device)
    if "pixel_values" in enc and torch.is_floating_point(enc["pixel_values"]):
        enc["pixel_values"] = enc["pixel_values"].to(h.model.dtype)
    ids = enc["input_ids"] if "input_ids" in enc else None
    n_prompt = int(ids.shape[1]) if ids is not None else 0
    kw = dict(kw)
    if h.context is not None and not h.model.config.is_encoder_decoder and ids is not None:
        if n_prompt >= h.context:
            raise WorkerError("INVALID_ARGUMENT", f"{h.name}: the conversation is {n_prompt} tokens (images included); "
                                                  f"this model's context is {h.context} tokens: send fewer or smaller "
                                                  "turns or images")
        kw["max_new_tokens"] = min(kw["max_new_tokens"], h.context - n_prompt)
    streamer = PieceStreamer(h.tokenizer, ids[0].tolist() if ids is not None and not h.model.config.is_encoder_decoder
                             else [], emit)
    extra = {"stopping_criteria": stopping(call)} if call is not None else {}
    pad = h.tokenizer.pad_token_id if h.tokenizer.pad_token_id is not None else h.tokenizer.eos_token_id
    with torch.inference_mode():
        out = h.model.generate(**enc, **kw, **extra, **h.gen_extra, streamer=streamer, pad_token_id=pad)
    if call is not None:
        call.check()   # cancelled or past the deadline: the stopping criteria ended generation early
    gen = out[0, n_prompt:] if not h.model.config.is_encoder_decoder else out[0, 1:]
    stop_ids = _eos_ids(h)
    last = int(gen[-1]) if gen.numel() else None
    reason = "stop" if (last in stop_ids or len(gen) < kw["max_new_tokens"]) else "length"
    return streamer.text, reason, streamer.tokens


def _eos_ids(h: VLChat) -> set:
    from workers.hf.generation import eos_ids
    return eos_ids(h.model, h.tokenizer)


def answer(h: VLChat, call, messages: list, images: list) -> X.PipelineOutput:
    kw = generation_options(call)
    emit = (lambda text: call.emit(0, text)) if getattr(call, "emit", None) is not None else None
    text, reason, n = _generate(h, messages, images, kw, call, emit)
    return X.PipelineOutput(kind="text", text=text, finish_reason=reason, tokens_generated=n)


def run(h: VLChat, call) -> list:
    messages, images = conversation(call, h.name)
    call.check()
    return [answer(h, call, messages, images)]
