"""audio-classification: CLAP zero-shot (audio vs candidate labels, also audio embeddings) or a model with
an audio-classification head (labels from its config). Audio: WAV or raw PCM, resampled to the model's rate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.hf.pipelines.common import auto, id2label, labels_out, model, need_labels
from workers.hf.pipelines.registry import read_config


@dataclass
class AudioClassifier:
    model: Any
    feature_extractor: Any
    tokenizer: Any
    device: str
    clap: bool

    @property
    def rate(self) -> int:
        return int(getattr(self.feature_extractor, "sampling_rate", 16000))


def load(lc) -> AudioClassifier:
    if read_config(lc.path).get("model_type") == "clap":
        return AudioClassifier(model("ClapModel", lc, "a CLAP model"), auto("AutoFeatureExtractor", lc, "a CLAP feature extractor"),
                               auto("AutoTokenizer", lc, "a CLAP tokenizer"), lc.device, True)
    return AudioClassifier(model("AutoModelForAudioClassification", lc, "an audio classifier"),
                           auto("AutoFeatureExtractor", lc, "a feature extractor"), None, lc.device, False)


def warm_up(h: AudioClassifier) -> None:
    import numpy as np
    feats = _features(h, [np.zeros(h.rate // 2, dtype=np.float32)])
    if h.clap:
        _audio_emb(h, feats)


def _features(h, audios):
    kw = {} if h.clap else {"padding": True}
    return h.feature_extractor(audios, sampling_rate=h.rate, return_tensors="pt", **kw)


def _audio_emb(h, feats):
    import torch
    feats = {k: (v.to(h.device, dtype=h.model.dtype) if v.is_floating_point() else v.to(h.device))
             for k, v in feats.items()}
    with torch.inference_mode():
        f = h.model.get_audio_features(**feats)
    f = getattr(f, "pooler_output", f)
    return torch.nn.functional.normalize(f.float(), dim=-1)


def _text_emb(h, texts):
    import torch
    enc = h.tokenizer(texts, padding=True, return_tensors="pt").to(h.device)
    with torch.inference_mode():
        f = h.model.get_text_features(**enc)
    f = getattr(f, "pooler_output", f)
    return torch.nn.functional.normalize(f.float(), dim=-1)


def run(h: AudioClassifier, call) -> list:
    import torch
    call.only("audio", *(("text",) if h.clap else ()), what="audio-classification")
    audios = call.of_kind("audio")
    if not audios:
        from workers.context import WorkerError
        raise WorkerError("INVALID_ARGUMENT", "audio-classification needs at least one audio input")
    samples = [call.audio(i, h.rate) for i in audios]
    call.check()
    outs = []
    if h.clap:
        labels = need_labels(call, "CLAP zero-shot audio classification")
        a = _audio_emb(h, _features(h, samples))
        t = _text_emb(h, labels)
        scale = float(h.model.logit_scale_a.detach().exp()) if hasattr(h.model, "logit_scale_a") else 100.0
        for v in a:
            o = labels_out(torch.softmax(scale * (t @ v), 0).tolist(), labels)
            o.kind, o.embedding[:] = "audio", v.tolist()
            outs.append(o)
        return outs
    feats = {k: v.to(h.device) for k, v in _features(h, samples).items()}
    with torch.inference_mode():
        probs = h.model(**feats).logits.float().softmax(-1)
    names = id2label(h.model.config, probs.shape[-1])
    top_k = call.int_opt("top_k", 5, 1, 100000)
    for p in probs:
        o = labels_out(p.tolist(), names, top_k)
        o.kind = "audio"
        outs.append(o)
    return outs
