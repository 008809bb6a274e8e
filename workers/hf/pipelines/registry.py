"""The pipeline registry of the hf worker: pipeline_type -> (loader, handler).

Each entry names a module of this package that defines
    load(lc: LoadContext) -> handle          # builds everything the handler needs (may define close())
    warm_up(handle) -> None                  # optional: one tiny pass, so a broken model fails the load
and, for kind "run" (served by pythonml.v1.Pipelines/Run),
    run(handle, call: Call) -> list[PipelineOutput]
Kinds "generate" and "embed" serve ml.TransformersService; "speech" serves pythonml.v1.Speech.
Adding a pipeline = one Entry below plus its module. Modules are imported on first use only.
"""
from __future__ import annotations

import importlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from workers.context import WorkerError


def bounded_option(opts: dict, name: str, default, lo, hi, cast=int, label: str = "option"):
    """opts[name] parsed with `cast` and checked against lo..hi; `default` when absent or empty."""
    v = opts.get(name, "")
    if v in ("", None):
        return default
    try:
        x = cast(v)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise WorkerError("INVALID_ARGUMENT", f"{label} {name}='{v}' is not {kind}") from None
    if not lo <= x <= hi:
        raise WorkerError("INVALID_ARGUMENT", f"{label} {name}={x} is outside {lo}..{hi}")
    return x


@dataclass(frozen=True)
class Entry:
    name: str                  # canonical pipeline_type
    module: str                # module of this package with load / run
    kind: str                  # generate | embed | speech | run
    aliases: tuple = ()
    what: str = ""
    model_types: tuple = ()    # config.json model_type(s) this entry is made for
    serves: tuple = ()         # generic pipeline types it also answers for those models (see refine)


ENTRIES: list[Entry] = [
    Entry("text-generation", "text_generation", "generate",
          ("chat", "conversational", "causal-lm", "text-generation-inference"), "streaming generation and chat"),
    Entry("feature-extraction", "sentence_embeddings", "embed",
          ("sentence-similarity", "embeddings", "embedding", "sentence-transformers"), "text embeddings"),
    Entry("automatic-speech-recognition", "speech", "speech", ("asr", "whisper", "speech-to-text", "transcription"),
          "speech-to-text: faster-whisper (CTranslate2) or transformers Whisper"),
    Entry("image-text-embeddings", "clip", "run", ("clip", "zero-shot-image-classification", "image-text"),
          "CLIP-style image and text embeddings, similarities, zero-shot image labels"),
    Entry("image-to-text", "image_to_text", "run", ("image-captioning", "captioning"),
          "captioning: one text per image (optional text prompt)"),
    Entry("image-text-to-text", "vl_chat", "run",
          ("multimodal", "vision-language", "vlm", "vision-language-chat", "vl-chat", "image-chat"),
          "vision-language chat: messages with images -> answer (token streaming through RunStream)"),
    Entry("florence2", "florence2", "run", ("florence-2", "florence"),
          "Florence-2 tasks: captions, OCR, detection boxes, OCR quad boxes, grounding, polygons",
          model_types=("florence2",), serves=("image-to-text", "image-text-to-text")),
    Entry("janus", "janus", "run", ("janus-pro",), "Janus / Janus-Pro understanding: image + text chat",
          model_types=("janus",), serves=("image-to-text", "image-text-to-text")),
    Entry("image-classification", "image_classification", "run", (), "image labels with scores"),
    Entry("zero-shot-classification", "zero_shot", "run", ("nli",), "text labels from candidate labels (NLI)"),
    Entry("translation", "seq2seq", "run", ("text2text-generation", "seq2seq"),
          "encoder-decoder text generation"),
    Entry("summarization", "summarization", "run", ("summarize", "summary", "summaries"),
          "summaries by an encoder-decoder model (BART, PEGASUS, T5), with the model's summarization settings"),
    Entry("code-completion", "code_completion", "run", ("fill-in-the-middle", "fim", "code-infilling", "infilling"),
          "code completion; fill-in-the-middle between a prefix and a suffix with the model's FIM tokens"),
    Entry("token-classification", "token_classification", "run",
          ("ner", "named-entity-recognition", "entity-recognition", "entity-extraction", "entities"),
          "named entities (NER) / token labels, aggregated, with character offsets"),
    Entry("text-ranking", "rerank", "run", ("rerank", "reranking", "cross-encoder"), "cross-encoder reranking"),
    Entry("text-to-speech", "tts", "run", ("text-to-audio", "tts", "speech-synthesis"),
          "speech synthesis: transformers VITS / MMS-TTS, or a piper voice (optional extra)"),
    Entry("audio-classification", "audio_classification", "run", ("zero-shot-audio-classification", "clap"),
          "audio labels: CLAP zero-shot or a sequence-classification head"),
    Entry("tokenization", "tokenize", "run", ("tokenizer", "tokenize", "tokens"), "token ids, tokens, offsets"),
    Entry("litert-lm", "litert_lm", "generate", ("litertlm", "litert-lm-generation"),
          "streaming generation and chat on a LiteRT-LM bundle (.litertlm / .task): chosen by the model's file"),
]

_BY_NAME: dict[str, Entry] = {}
_COMPACT: dict[str, Entry] = {}   # names without separators: the upstream CamelCase ("CodeCompletion", "TextToSpeech")
for _e in ENTRIES:
    for _n in (_e.name, *_e.aliases):
        _BY_NAME[_n] = _e
        _COMPACT.setdefault(_n.replace("-", ""), _e)


def lookup(pipeline_type: str) -> Optional[Entry]:
    key = (pipeline_type or "").strip().lower().replace("_", "-")
    return _BY_NAME.get(key) or _COMPACT.get(key.replace("-", "").replace(" ", ""))


def names() -> list[str]:
    return [e.name for e in ENTRIES]


def refine(entry: Entry, path: Path) -> Entry:
    """The entry made for the model at `path` when `entry` is a generic type it also serves
    (image-text-to-text on a Florence-2 folder -> florence2); else `entry`."""
    mt = read_config(path).get("model_type", "")
    for e in ENTRIES:
        if mt and mt in e.model_types and entry.name in e.serves:
            return e
    return entry


def answers(loaded: Entry, wanted: Entry) -> bool:
    """Whether a model loaded as `loaded` answers requests naming `wanted`."""
    return loaded.name == wanted.name or wanted.name in loaded.serves


def has_chat_template(path: Path) -> bool:
    p = Path(path)
    if (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file():
        return True
    for name in ("processor_config.json", "tokenizer_config.json"):
        try:
            if json.loads((p / name).read_text()).get("chat_template"):
                return True
        except (OSError, ValueError, AttributeError):
            pass
    return False


def require(pipeline_type: str) -> Entry:
    e = lookup(pipeline_type)
    if e is None:
        raise WorkerError("UNIMPLEMENTED", f"pipeline_type '{pipeline_type}' is not served by the hf worker; use one of "
                                           f"{names()} (or an alias: {sorted(set(_BY_NAME) - set(names()))})")
    return e


def module_of(entry: Entry):
    return importlib.import_module(f"workers.hf.pipelines.{entry.module}")


def read_config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def is_ctranslate2_whisper(path: Path) -> bool:
    p = Path(path)
    return (p / "model.bin").is_file() and ((p / "vocabulary.txt").is_file() or (p / "vocabulary.json").is_file()
                                            or "alignment_heads" in read_config(p))


def detect(path: Path, gguf: bool) -> Entry:
    """pipeline_type from a model directory when LoadModel names none."""
    p = Path(path)
    if (p / "modules.json").is_file():
        return lookup("feature-extraction")
    if gguf:
        return lookup("text-generation")
    if is_ctranslate2_whisper(p):
        return lookup("automatic-speech-recognition")
    if not (p / "config.json").is_file() and any(p.glob("*.onnx.json")):   # a piper voice
        return lookup("text-to-speech")
    cfg = read_config(p)
    mt = cfg.get("model_type", "")
    archs = cfg.get("architectures") or []
    for e in ENTRIES:
        if mt and mt in e.model_types:
            return e
    if mt == "whisper":
        return lookup("automatic-speech-recognition")
    if mt in ("clip", "siglip", "siglip2", "chinese_clip"):
        return lookup("image-text-embeddings")
    if mt == "clap":
        return lookup("audio-classification")
    if mt == "vits":
        return lookup("text-to-speech")
    if mt == "vision-encoder-decoder" or any("ForImageTextToText" in a or "ForConditionalGeneration" in a and
                                             "vision_config" in cfg for a in archs):
        vl_chat = mt != "vision-encoder-decoder" and has_chat_template(p)
        return lookup("image-text-to-text" if vl_chat else "image-to-text")
    if any("ForTokenClassification" in a for a in archs):
        return lookup("token-classification")
    if any("ForImageClassification" in a for a in archs):
        return lookup("image-classification")
    if any("ForAudioClassification" in a or "ForSequenceClassification" in a and "feature_extractor_type" in cfg
           for a in archs):
        return lookup("audio-classification")
    if any("ForConditionalGeneration" in a or "MTModel" in a for a in archs) or cfg.get("is_encoder_decoder"):
        tasks = list(cfg.get("task_specific_params") or {})   # BART-CNN, PEGASUS: summarization settings only
        return lookup("summarization" if tasks and all(t.startswith("summarization") for t in tasks)
                      else "translation")
    if any("CausalLM" in a or "LMHead" in a for a in archs):
        return lookup("text-generation")
    return lookup("feature-extraction")


# ---- what loaders and handlers receive -------------------------------------------------------------
@dataclass
class LoadContext:
    model_id: str
    path: Path
    resolved: Any                 # workers.hf.resolve.Resolved
    device: str
    dtype: Any                    # torch dtype
    opts: dict                    # LoadModel options
    worker_options: dict
    threads: int = 0
    log: Any = None

    def fail(self, what: str, exc: BaseException) -> WorkerError:
        return WorkerError("FAILED_PRECONDITION", f"model '{self.model_id}' at {self.path} could not be loaded as "
                                                  f"{what}: {type(exc).__name__}: {exc}")


@dataclass
class Input:
    index: int
    kind: str                     # text | image | audio
    text: str = ""
    data: Any = None              # bytes / memoryview for image and audio
    encoding: str = ""
    sample_rate: int = 0
    role: str = ""

    @property
    def where(self) -> str:
        return f"inputs[{self.index}]"


@dataclass
class Call:
    inputs: list
    options: dict
    candidate_labels: list
    ctx: Any = None               # RequestContext (cancellation, deadline)
    emit: Any = None              # Pipelines/RunStream: emit(output_index, text) sends a piece as it is generated
    max_audio_s: float = 1800.0
    max_image_pixels: int = 64 * 2**20

    def of_kind(self, kind: str) -> list:
        return [i for i in self.inputs if i.kind == kind]

    def only(self, *kinds: str, what: str = "") -> None:
        for i in self.inputs:
            if i.kind not in kinds:
                raise WorkerError("INVALID_ARGUMENT", f"{i.where}: {what or 'this pipeline'} takes "
                                                      f"{' or '.join(kinds)} inputs, got {i.kind}")
        if not self.inputs:
            raise WorkerError("INVALID_ARGUMENT", f"inputs is empty: send at least one {' or '.join(kinds)} input")

    def labels(self) -> list[str]:
        labels = [s.strip() for s in self.candidate_labels if s.strip()]
        if not labels and self.options.get("candidate_labels"):
            labels = [s.strip() for s in self.options["candidate_labels"].split(",") if s.strip()]
        labels += [i.text for i in self.inputs if i.kind == "text" and i.role == "label"]
        return labels

    def int_opt(self, name: str, default: int, lo: int = 0, hi: int = 1 << 30) -> int:
        return bounded_option(self.options, name, default, lo, hi, int)

    def check(self) -> None:
        if self.ctx is not None:
            self.ctx.check_cancelled()

    def image(self, inp: Input):
        """Decoded RGB PIL image, or INVALID_ARGUMENT saying what arrived instead."""
        from PIL import Image, UnidentifiedImageError
        data = bytes(inp.data or b"")
        if not data:
            raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: image is empty")
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > self.max_image_pixels:
                raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: image is {img.width}x{img.height}; the limit is "
                                                      f"{self.max_image_pixels} pixels")
            return img.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            what = "a WAV audio file" if data[:4] == b"RIFF" and data[8:12] == b"WAVE" else f"{len(data)} bytes"
            raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: got {what} where an image was expected "
                                                  f"(could not decode: {exc})") from None

    def audio(self, inp: Input, rate: int):
        from common import audio as A
        return A.decode(inp.data, inp.encoding, inp.sample_rate, 0, where=inp.where, target_rate=rate,
                        max_seconds=self.max_audio_s)
