"""text-to-speech: a text-to-waveform model (VITS / MMS-TTS style). One output per text input:
`audio` = float32 little-endian mono samples, `sample_rate` from the model config.
Option seed (default 0) makes the stochastic duration predictor repeatable."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protos import pythonml_pb2 as X
from workers.context import WorkerError
from workers.hf.pipelines.common import auto, model


@dataclass
class TTS:
    model: Any
    tokenizer: Any
    device: str
    rate: int
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(lc) -> TTS:
    m = model("AutoModelForTextToWaveform", lc, "a text-to-waveform (TTS) model")
    rate = int(getattr(m.config, "sampling_rate", 0) or getattr(m.config, "sample_rate", 0) or 16000)
    return TTS(m, auto("AutoTokenizer", lc, "a tokenizer"), lc.device, rate)


def warm_up(h: TTS) -> None:
    _speak(h, "hello", 0)


def _speak(h: TTS, text: str, seed: int) -> np.ndarray:
    import torch
    enc = h.tokenizer(text, return_tensors="pt").to(h.device)
    if enc["input_ids"].shape[1] == 0:
        raise WorkerError("INVALID_ARGUMENT", f"text {text[:40]!r} has no token this TTS model can speak")
    with torch.inference_mode(), h.lock:   # the seed is process-global: one synthesis at a time
        torch.manual_seed(seed)
        wav = h.model(**enc).waveform
    return wav[0].float().cpu().numpy().astype("<f4")


def run(h: TTS, call) -> list:
    call.only("text", what="text-to-speech")
    seed = call.int_opt("seed", 0)
    outs = []
    for inp in call.inputs:
        call.check()
        if not inp.text.strip():
            raise WorkerError("INVALID_ARGUMENT", f"{inp.where}: text is empty")
        outs.append(X.PipelineOutput(kind="text", audio=_speak(h, inp.text, seed).tobytes(), sample_rate=h.rate))
    return outs
