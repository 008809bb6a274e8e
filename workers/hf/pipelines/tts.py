"""text-to-speech: a transformers text-to-waveform model (VITS / MMS-TTS) or a piper voice.

Backends, chosen by what the model folder holds:
- transformers (config.json): AutoModelForTextToWaveform, e.g. VITS / facebook/mms-tts-* (their tokenizers set
  phonemize=False, so no phonemizer is needed);
- piper (`<voice>.onnx` + `<voice>.onnx.json`, e.g. the built-in `piper` voice en_US-joe-medium): the optional
  piper-tts engine (GPL-3.0-or-later, so never installed by default: `scripts/setup.sh --piper` installs it
  and the voice). A piper voice without the engine answers FAILED_PRECONDITION saying so.
One output per text input: `audio` in `encoding`, `sample_rate` (the model's: 16000 for MMS, 22050 for the
piper voice). Options: format = pcm_f32le (default: float32 little-endian mono) | pcm_s16le | wav (16-bit PCM
mono WAV, rate in its header); speed (1.0, 0.25..4: speaking rate); seed (0: the transformers backend's
stochastic duration predictor is seeded, so an answer repeats; piper's noise is not seeded).
"""
from __future__ import annotations

import inspect
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from protos import pythonml_pb2 as X
from workers.context import WorkerError
from workers.hf.pipelines.common import auto, model
from workers.hf.pipelines.registry import bounded_option

FORMATS = ("pcm_f32le", "pcm_s16le", "wav")
PIPER_HINT = ("the piper engine (piper-tts, GPL-3.0-or-later) is an optional extra, not installed by default: "
              "run scripts/setup.sh --piper (installs piper-tts and the en_US voice 'piper'), or use a transformers "
              "VITS / MMS-TTS model")


@dataclass
class TTS:
    model: Any                     # transformers model, or piper.PiperVoice
    tokenizer: Any                 # None for piper
    device: str
    rate: int
    backend: str = "transformers"  # transformers | piper
    lock: threading.Lock = field(default_factory=threading.Lock)


def piper_voice_file(path: Path, model_id: str = "") -> Optional[Path]:
    """The piper voice (.onnx with its .onnx.json) in `path`: the one `model_id` names, else the first."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    voices = sorted(v for v in p.glob("*.onnx") if Path(str(v) + ".json").is_file()) if p.is_dir() else []
    named = [v for v in voices if model_id.endswith(v.name)]
    return (named or voices or [None])[0]


def _load_piper(lc, onnx: Path) -> TTS:
    try:
        import onnxruntime
        from piper import PiperConfig, PiperVoice
    except ImportError:
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' is a piper voice ({onnx.name}); "
                                                 + PIPER_HINT) from None
    try:
        cfg = PiperConfig.from_dict(json.loads(Path(str(onnx) + ".json").read_text(encoding="utf-8")))
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = max(1, int(lc.threads or 1))   # the worker's thread budget, not every core
        so.inter_op_num_threads = 1
        cuda = lc.device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        voice = PiperVoice(config=cfg, session=onnxruntime.InferenceSession(str(onnx), sess_options=so,
                                                                            providers=providers))
    except Exception as exc:   # a bad .onnx.json, or onnxruntime's own errors (a damaged .onnx)
        raise lc.fail("a piper voice", exc) from None
    return TTS(voice, None, lc.device, int(cfg.sample_rate), "piper")


def load(lc) -> TTS:
    onnx = None if (Path(lc.path) / "config.json").is_file() else piper_voice_file(lc.path, lc.model_id)
    if onnx is not None:
        return _load_piper(lc, onnx)
    m = model("AutoModelForTextToWaveform", lc, "a text-to-waveform (TTS) model")
    rate = int(getattr(m.config, "sampling_rate", 0) or getattr(m.config, "sample_rate", 0) or 16000)
    return TTS(m, auto("AutoTokenizer", lc, "a tokenizer"), lc.device, rate)


def warm_up(h: TTS) -> None:
    _speak(h, "hello", 0, 1.0)


def _speak(h: TTS, text: str, seed: int, speed: float) -> np.ndarray:
    if h.backend == "piper":
        from piper import SynthesisConfig
        chunks = [c.audio_float_array for c in h.model.synthesize(text, SynthesisConfig(length_scale=1.0 / speed))]
        if not chunks:
            raise WorkerError("INVALID_ARGUMENT", f"text {text[:40]!r} has nothing this piper voice can speak")
        return np.concatenate(chunks).astype("<f4")
    import torch
    enc = h.tokenizer(text, return_tensors="pt").to(h.device)
    if enc["input_ids"].shape[1] == 0:
        raise WorkerError("INVALID_ARGUMENT", f"text {text[:40]!r} has no token this TTS model can speak")
    kw = {"speaking_rate": speed} if "speaking_rate" in inspect.signature(h.model.forward).parameters else {}
    if speed != 1.0 and not kw:
        raise WorkerError("INVALID_ARGUMENT", f"option speed: this model ({type(h.model).__name__}) has no "
                                              "speaking rate")
    with torch.inference_mode(), h.lock:   # the seed is process-global: one synthesis at a time
        torch.manual_seed(seed)
        wav = h.model(**enc, **kw).waveform
    return wav[0].float().cpu().numpy().astype("<f4")


def encode(x: np.ndarray, rate: int, fmt: str) -> bytes:
    if fmt == "pcm_f32le":
        return x.astype("<f4").tobytes()
    if fmt == "wav":
        from common.audio import to_wav_bytes
        return to_wav_bytes(x, rate)
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def run(h: TTS, call) -> list:
    call.only("text", what="text-to-speech")
    seed = call.int_opt("seed", 0)
    speed = bounded_option(call.options, "speed", 1.0, 0.25, 4.0, float)
    fmt = (call.options.get("format") or call.options.get("encoding") or "pcm_f32le").strip().lower()
    if fmt not in FORMATS:
        raise WorkerError("INVALID_ARGUMENT", f"option format '{fmt}' is not one of {list(FORMATS)}")
    outs = []
    for inp in call.inputs:
        call.check()
        if not inp.text.strip():
            raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: text is empty")
        x = _speak(h, inp.text, seed, speed)
        outs.append(X.PipelineOutput(kind="text", audio=encode(x, h.rate, fmt), sample_rate=h.rate, encoding=fmt))
    return outs
