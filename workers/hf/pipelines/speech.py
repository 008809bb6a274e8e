"""automatic-speech-recognition: faster-whisper for CTranslate2 directories, transformers for HF Whisper.

Both backends take float32 mono audio at 16 kHz and return segments with timestamps, and ask
`should_stop()` (which raises Cancelled / DEADLINE_EXCEEDED) between segments (faster-whisper) or at
every decoded token (transformers), so a caller that leaves stops the transcription. Streaming
(StreamState) keeps a buffer of not-yet-final audio per stream: it re-decodes the buffer every
`partial_interval_s` of new audio (partial hypothesis), and finalizes on trailing silence, when the
buffer exceeds `max_buffer_s` (everything but the last segment), or on the client's `end` chunk.

LoadModel options: compute_type (faster-whisper: int8 on CPU, float16 on CUDA by default),
beam_size (default 1 = greedy), language, max_new_tokens (transformers, default 440), num_workers.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from common.options import as_bool
from workers.context import Cancelled, WorkerError
from workers.hf.pipelines.registry import bounded_option, is_ctranslate2_whisper, read_config

RATE = 16000
TASKS = ("transcribe", "translate")


@dataclass
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class Result:
    segments: list
    language: str
    language_probability: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


class FasterWhisper:
    backend = "faster-whisper"

    def __init__(self, lc):
        from faster_whisper import WhisperModel
        dev = "cuda" if lc.device.startswith("cuda") else "cpu"
        index = int(lc.device.split(":")[1]) if ":" in lc.device else 0
        compute = lc.opts.get("compute_type") or ("float16" if dev == "cuda" else "int8")
        try:
            self.model = WhisperModel(str(lc.path), device=dev, device_index=index, compute_type=compute,
                                      cpu_threads=max(0, int(lc.threads or 0)),
                                      num_workers=int(lc.opts.get("num_workers") or 1), local_files_only=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise lc.fail("a CTranslate2 Whisper model (faster-whisper)", exc) from None
        self.multilingual = bool(self.model.model.is_multilingual)
        self.compute_type = compute

    def transcribe(self, audio: np.ndarray, language: str, task: str, beam_size: int, options: dict,
                   should_stop: Callable[[], None]) -> Result:
        kw: dict[str, Any] = dict(language=language or (None if self.multilingual else "en"), task=task,
                                  beam_size=beam_size, condition_on_previous_text=False)
        if options.get("initial_prompt"):
            kw["initial_prompt"] = options["initial_prompt"]
        if options.get("temperature"):
            kw["temperature"] = float(options["temperature"])
        if as_bool(options.get("vad_filter"), False, "vad_filter"):
            kw["vad_filter"] = True
        try:
            segs, info = self.model.transcribe(audio, **kw)
            out = []
            for s in segs:    # lazy: decoding happens while iterating, so cancellation is per segment
                should_stop()
                out.append(Segment(float(s.start), float(s.end), s.text, float(s.avg_logprob),
                                   float(s.no_speech_prob)))
        except ValueError as exc:   # e.g. an unknown language code
            raise WorkerError("INVALID_ARGUMENT", f"transcription options rejected: {exc}") from None
        return Result(out, info.language, float(info.language_probability))


class HFWhisper:
    backend = "transformers"

    def __init__(self, lc):
        from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer
        try:
            self.fe = AutoFeatureExtractor.from_pretrained(str(lc.path), local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(str(lc.path), local_files_only=True)
            self.model = AutoModelForSpeechSeq2Seq.from_pretrained(str(lc.path), local_files_only=True,
                                                                   dtype=lc.dtype).to(lc.device).eval()
        except (OSError, ValueError) as exc:
            raise lc.fail("a transformers speech-to-text model", exc) from None
        gc = self.model.generation_config
        self.multilingual = bool(getattr(gc, "is_multilingual", False))
        self.timestamps = getattr(gc, "no_timestamps_token_id", None) is not None
        limit = int(getattr(self.model.config, "max_target_positions", 448) or 448) - 8
        self.max_new = max(1, min(int(lc.opts.get("max_new_tokens") or 440), limit))
        self.device = lc.device
        self.lock = threading.Lock()   # generate() on one model object is not re-entrant
        self.time_precision = 0.02

    def _decode(self, window: np.ndarray, language: str, task: str, beam_size: int,
                should_stop: Callable[[], None] = lambda: None) -> list:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Stop(StoppingCriteria):   # cancellation reaches every decoded token (should_stop raises)
            def __call__(self, input_ids, scores, **kwargs):
                should_stop()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        feats = self.fe(window, sampling_rate=RATE, return_tensors="pt").input_features
        feats = feats.to(self.device, dtype=self.model.dtype)
        kw: dict[str, Any] = dict(max_new_tokens=self.max_new, num_beams=max(1, beam_size),
                                  stopping_criteria=StoppingCriteriaList([_Stop()]))
        if self.multilingual:
            kw["task"] = task
            if language:
                kw["language"] = language
        if self.timestamps:
            kw["return_timestamps"] = True
        with torch.inference_mode(), self.lock:
            ids = self.model.generate(feats, **kw)
        seq = ids[0].tolist() if hasattr(ids, "tolist") else ids["sequences"][0].tolist()
        return seq

    def _segments(self, seq: list, offset: float, dur: float) -> list:
        """Split a token sequence on timestamp tokens (<|t|> text <|t|>); without them one segment."""
        tok = self.tokenizer
        gc = self.model.generation_config
        ts_begin = (gc.no_timestamps_token_id + 1) if self.timestamps else None
        special = set(tok.all_special_ids)
        out, cur, start = [], [], None
        for t in seq:
            if ts_begin is not None and t >= ts_begin:
                tsec = (t - ts_begin) * self.time_precision
                if start is None:
                    start = tsec
                else:
                    text = tok.decode(cur, skip_special_tokens=True)
                    if text.strip():
                        out.append(Segment(offset + start, offset + min(max(tsec, start), dur), text))
                    cur, start = [], None
                continue
            if t not in special:
                cur.append(t)
        text = tok.decode(cur, skip_special_tokens=True) if cur else ""
        if text.strip():
            out.append(Segment(offset + (start or 0.0), offset + dur, text))
        return out

    def transcribe(self, audio: np.ndarray, language: str, task: str, beam_size: int, options: dict,
                   should_stop: Callable[[], None]) -> Result:
        win = 30 * RATE
        segs: list = []
        for i in range(0, max(1, len(audio)), win):   # 30 s windows, the model's receptive field
            should_stop()
            piece = audio[i:i + win]
            segs += self._segments(self._decode(piece, language, task, beam_size, should_stop), i / RATE,
                                   len(piece) / RATE)
        return Result(segs, language or ("" if self.multilingual else "en"))


def load(lc):
    if is_ctranslate2_whisper(lc.path):
        return FasterWhisper(lc)
    cfg = read_config(lc.path)
    if cfg.get("model_type") not in ("whisper", "speech_to_text", "speech-encoder-decoder", "moonshine"):
        raise WorkerError("FAILED_PRECONDITION", f"model '{lc.model_id}' at {lc.path} is neither a CTranslate2 "
                                                 "Whisper directory (model.bin + vocabulary) nor an HF speech-to-text "
                                                 f"model (config model_type '{cfg.get('model_type', '?')}')")
    return HFWhisper(lc)


def warm_up(h) -> None:
    h.transcribe(np.zeros(RATE // 2, dtype=np.float32), "", "transcribe", 1, {}, lambda: None)


def check_task(task: str) -> str:
    t = (task or "transcribe").strip().lower()
    if t not in TASKS:
        raise WorkerError("INVALID_ARGUMENT", f"task '{task}' is not supported; use transcribe or translate")
    return t


def check_beam(n) -> int:
    try:
        b = int(n or 1)
    except ValueError:
        raise WorkerError("INVALID_ARGUMENT", f"beam_size '{n}' is not an integer") from None
    if not 1 <= b <= 16:
        raise WorkerError("INVALID_ARGUMENT", f"beam_size {b} is outside 1..16")
    return b


# ---- streaming -------------------------------------------------------------------------------------
def _float_opt(meta: dict, name: str, default: float, lo: float, hi: float) -> float:
    return bounded_option(meta, name, default, lo, hi, float, "stream option")


@dataclass
class StreamState:
    model_id: str
    sample_rate: int
    encoding: str
    channels: int
    language: str
    beam_size: int
    partial_interval_s: float
    max_buffer_s: float
    silence_s: float
    silence_rms: float
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    offset_s: float = 0.0                # stream time of buffer[0]
    received: int = 0                    # samples (16 kHz) received
    decoded_at: int = 0                  # buffer length at the last decode
    hypothesis: list = field(default_factory=list)
    detected_language: str = ""
    chunks: int = 0
    ended: bool = False

    @classmethod
    def start(cls, model_id: str, chunk, default_beam: int) -> "StreamState":
        meta = dict(chunk.metadata)
        enc = (chunk.encoding or "pcm_s16le").strip().lower()
        from common.audio import PCM_ENCODINGS, _check_rate
        if enc not in PCM_ENCODINGS:
            raise WorkerError("INVALID_ARGUMENT", f"StreamTranscribe: encoding '{chunk.encoding}' is not supported; "
                                                  "send raw pcm_s16le or pcm_f32le chunks")
        _check_rate(chunk.sample_rate, "StreamTranscribe first chunk")
        return cls(model_id=model_id, sample_rate=chunk.sample_rate, encoding=enc, channels=chunk.channels or 1,
                   language=chunk.language, beam_size=check_beam(meta.get("beam_size") or default_beam),
                   partial_interval_s=_float_opt(meta, "partial_interval_s", 1.0, 0.1, 30.0),
                   max_buffer_s=_float_opt(meta, "max_buffer_s", 20.0, 2.0, 30.0),
                   silence_s=_float_opt(meta, "silence_s", 0.6, 0.1, 10.0),
                   silence_rms=_float_opt(meta, "silence_rms", 0.01, 0.0, 1.0))

    def check_chunk(self, chunk) -> None:
        if self.ended:
            raise WorkerError("FAILED_PRECONDITION", "StreamTranscribe: a chunk arrived after the end chunk; "
                                                     "open a new stream")
        if chunk.sample_rate and chunk.sample_rate != self.sample_rate:
            raise WorkerError("INVALID_ARGUMENT", f"StreamTranscribe chunk {self.chunks}: sample_rate "
                                                  f"{chunk.sample_rate} Hz differs from the stream's {self.sample_rate} Hz")
        enc = (chunk.encoding or self.encoding).strip().lower()
        if enc != self.encoding:
            raise WorkerError("INVALID_ARGUMENT", f"StreamTranscribe chunk {self.chunks}: encoding '{enc}' differs "
                                                  f"from the stream's '{self.encoding}'")

    def trailing_silence(self) -> bool:
        """True when the buffer holds speech followed by at least silence_s of quiet."""
        n = int(self.silence_s * RATE)
        if len(self.buffer) < n + RATE // 2:
            return False
        frame = RATE // 50   # 20 ms
        tail = self.buffer[-n:]
        head = self.buffer[:-n]
        k = len(tail) // frame
        rms_tail = np.sqrt(np.mean(tail[:k * frame].reshape(k, frame) ** 2, axis=1)) if k else np.zeros(1)
        kh = len(head) // frame
        rms_head = np.sqrt(np.mean(head[:kh * frame].reshape(kh, frame) ** 2, axis=1)) if kh else np.zeros(1)
        return bool(rms_tail.max() < self.silence_rms and rms_head.max() >= self.silence_rms)


def shift(segs: list, offset: float) -> list:
    return [Segment(s.start + offset, s.end + offset, s.text, s.avg_logprob, s.no_speech_prob) for s in segs]


def stream_step(h, st: StreamState, samples: np.ndarray, end: bool, task: str, options: dict,
                should_stop: Callable[[], None]) -> tuple[bool, list, list, float]:
    """Feed one chunk. Returns (is_final, final_segments, partial_segments, processing_s)."""
    t0 = time.perf_counter()
    if samples.size:
        st.buffer = np.concatenate([st.buffer, samples]) if st.buffer.size else samples.astype(np.float32)
        st.received += samples.size
    st.chunks += 1
    buf_s = len(st.buffer) / RATE

    def decode() -> list:
        if not st.buffer.size:
            return []
        res = h.transcribe(st.buffer, st.language, task, st.beam_size, options, should_stop)
        st.detected_language = st.detected_language or res.language
        st.decoded_at = len(st.buffer)
        return [s for s in res.segments if s.text.strip()]

    if end or st.trailing_silence():
        finals = shift(decode(), st.offset_s)
        st.offset_s += buf_s
        st.buffer = np.zeros(0, dtype=np.float32)
        st.decoded_at = 0
        st.hypothesis = []
        st.ended = end
        return True, finals, [], time.perf_counter() - t0
    if buf_s >= st.max_buffer_s:
        segs = decode()
        if len(segs) > 1:   # keep the last (possibly cut) segment as the start of the next buffer
            cut = max(0.0, min(segs[-1].start, buf_s))
            finals, keep = segs[:-1], int(cut * RATE)
        else:
            finals, keep = segs, len(st.buffer)
        finals = shift(finals, st.offset_s)
        st.offset_s += keep / RATE
        st.buffer = st.buffer[keep:].copy()
        st.decoded_at = 0
        st.hypothesis = shift([s for s in segs[len(finals):]], st.offset_s - keep / RATE) if len(segs) > 1 else []
        return True, finals, st.hypothesis, time.perf_counter() - t0
    if (len(st.buffer) - st.decoded_at) >= st.partial_interval_s * RATE:
        st.hypothesis = shift(decode(), st.offset_s)
    return False, [], st.hypothesis, time.perf_counter() - t0


def stopper(ctx) -> Callable[[], None]:
    def check() -> None:
        if ctx is None:
            return
        if ctx.cancelled.is_set():
            raise Cancelled()
        ctx.check_cancelled()
    return check
