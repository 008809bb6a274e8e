"""Speech and pipeline verbs for `python run.py call`.

    run.py call transcribe speech.wav [--model whisper-tiny.en] [--language en] [--stream --chunk-ms 200]
    run.py call transcribe audio.raw --encoding pcm_s16le --sample-rate 16000
    run.py call pipeline tokenization all-MiniLM-L6-v2 "Hello world"
    run.py call pipeline image-classification models/tiny-vit tests/assets/happyfish.jpg --option top_k=3
    run.py call pipeline zero-shot-classification /models/nli "I loved it" --label positive --label negative
    run.py call pipeline text-to-speech /models/vits "hello" --out hello.wav
    run.py call pipeline ner models/tiny-ner "Grace Hopper visited Paris." --option aggregation=first
An INPUT that names an existing file is sent as an image (by extension) or audio (.wav/.pcm/.raw); any
other INPUT is text. Repeat INPUT for several inputs.
"""
from __future__ import annotations

import os
import sys
import time

from client.options import key_values
from protos import pythonml_pb2 as X
from protos import pythonml_pb2_grpc as XG

AUDIO_EXT = {".wav", ".pcm", ".raw"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


_options = key_values   # repeated --option key=value


def cmd_transcribe(args, channel) -> int:
    data = open(args.file, "rb").read()
    stub = XG.SpeechStub(channel)
    t0 = time.perf_counter()
    if not args.stream:
        r = stub.Transcribe(X.TranscribeRequest(model=args.model, audio=data, encoding=args.encoding,
                                                sample_rate=args.sample_rate, language=args.language,
                                                task=args.task, beam_size=args.beam_size), timeout=args.timeout)
        for s in r.segments:
            print(f"[{s.start_s:7.2f} -> {s.end_s:7.2f}] {s.text}")
        print(f"[{r.model} ({r.backend}), language {r.language}, {r.duration_s:.2f} s of audio in "
              f"{r.processing_s:.2f} s worker time, {time.perf_counter() - t0:.2f} s total]", file=sys.stderr)
        return 0
    from common.audio import parse_pcm, parse_wav
    if args.encoding in ("", "wav"):
        x, rate = parse_wav(data)
    else:
        x, rate = parse_pcm(data, args.encoding, args.sample_rate)
    pcm = (x.mean(axis=1).clip(-1, 1) * 32767).astype("<i2").tobytes()
    step = max(2, int(rate * args.chunk_ms / 1000) * 2)

    def chunks():
        for i in range(0, len(pcm), step):
            meta = {"partial_interval_s": str(args.partial_s)} if i == 0 else {}
            yield X.AudioChunk(model=args.model if i == 0 else "", pcm=pcm[i:i + step], sample_rate=rate,
                               encoding="pcm_s16le", language=args.language, metadata=meta)
            if args.realtime:
                time.sleep(args.chunk_ms / 1000)
        yield X.AudioChunk(end=True)

    for u in stub.StreamTranscribe(chunks(), timeout=args.timeout):
        if u.is_final:
            for s in u.segments:
                print(f"\r[{s.start_s:7.2f} -> {s.end_s:7.2f}] {s.text}" + " " * 20)
        elif u.text:
            sys.stderr.write(f"\r... {u.text[-100:]}")
            sys.stderr.flush()
    print(f"[streamed in {time.perf_counter() - t0:.2f} s]", file=sys.stderr)
    return 0


def _input(value: str, args) -> X.PipelineInput:
    if os.path.isfile(value):
        ext = os.path.splitext(value)[1].lower()
        data = open(value, "rb").read()
        if ext in AUDIO_EXT:
            return X.PipelineInput(audio=data, encoding=args.encoding, sample_rate=args.sample_rate)
        if ext in IMAGE_EXT:
            return X.PipelineInput(image=data)
        raise SystemExit(f"{value}: unknown file type {ext!r} (images: {sorted(IMAGE_EXT)}, audio: {sorted(AUDIO_EXT)})")
    return X.PipelineInput(text=value)


def cmd_pipeline(args, channel) -> int:
    inputs = [_input(v, args) for v in args.inputs]
    if args.query is not None:
        inputs.insert(0, X.PipelineInput(text=args.query, role="query"))
    t0 = time.perf_counter()
    r = XG.PipelinesStub(channel).Run(X.PipelineRequest(model=args.model, pipeline_type=args.type, inputs=inputs,
                                                        options=_options(args.option),
                                                        candidate_labels=args.label or []), timeout=args.timeout)
    for i, o in enumerate(r.outputs):
        head = f"[{i}] {o.kind or '-'}"
        if o.labels:
            print(head + ": " + ", ".join(f"{l.label}={l.score:.4f}" for l in o.labels))
        if o.text:
            print(head + f": {o.text}")
        from client.verbs_vl import describe
        for line in describe(o):   # boxes, quad boxes, polygons (florence2)
            print(head + f": {line}")
        if o.tokens:
            print(head + f": {len(o.token_ids)} tokens " + " ".join(f"{t}({i})" for t, i in zip(o.tokens, o.token_ids)))
        if o.embedding:
            print(head + f": embedding dim={len(o.embedding)} [" + " ".join(f"{x:+.4f}" for x in o.embedding[:4]) + " ...]")
        if o.scores and not o.labels:
            print(head + ": scores " + " ".join(f"{s:.4f}" for s in o.scores))
        from client.verbs_text import describe as describe_text, save_audio
        for line in describe_text(o):   # entities (token-classification)
            print(head + f": {line}")
        if o.audio:   # written as a WAV file whatever the encoding (option format)
            out = args.out or "speech.wav"
            if len(r.outputs) > 1:
                base, ext = os.path.splitext(out)
                out = f"{base}_{i}{ext or '.wav'}"
            print(head + ": " + save_audio(o, out))
    print(f"[{r.pipeline_type} on {r.model}: {r.processing_s * 1000:.0f} ms worker time, "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms total]", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("transcribe", help="speech-to-text of a WAV (or raw PCM) file")
    p.add_argument("file")
    p.add_argument("--model", default="")
    p.add_argument("--language", default="")
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    p.add_argument("--beam-size", type=int, default=0)
    p.add_argument("--encoding", default="", help="raw input: pcm_s16le | pcm_f32le (default: WAV)")
    p.add_argument("--sample-rate", type=int, default=0)
    p.add_argument("--stream", action="store_true", help="use StreamTranscribe (partial + final transcripts)")
    p.add_argument("--chunk-ms", type=int, default=200)
    p.add_argument("--partial-s", type=float, default=1.0)
    p.add_argument("--realtime", action="store_true", help="send chunks at real-time pace")
    p.set_defaults(func=cmd_transcribe)
    p = sub.add_parser("pipeline", help="run any HF pipeline: pipeline TYPE MODEL INPUT [INPUT ...]")
    p.add_argument("type", help="e.g. tokenization, image-classification, image-text-embeddings, translation, "
                                "summarization, code-completion, token-classification (ner), "
                                "zero-shot-classification, text-ranking, image-to-text, text-to-speech, "
                                "audio-classification")
    p.add_argument("model")
    p.add_argument("inputs", nargs="+", help="text, or a path to an image / audio file")
    p.add_argument("--label", action="append", help="candidate label (repeatable)")
    p.add_argument("--query", default=None, help="text-ranking: the query (INPUTs are the documents)")
    p.add_argument("--option", action="append", help="key=value pipeline option (repeatable)")
    p.add_argument("--encoding", default="")
    p.add_argument("--sample-rate", type=int, default=0)
    p.add_argument("--out", default="", help="text-to-speech: output WAV path")
    p.set_defaults(func=cmd_pipeline)
