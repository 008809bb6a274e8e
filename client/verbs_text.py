"""Text pipeline verbs for `python run.py call` (pythonml.v1.Pipelines/Run):

    run.py call complete MODEL "def add(a, b):" [--suffix "    return c"] [--max-new-tokens 64]   # FIM when --suffix
    run.py call complete MODEL --prefix-file before.py --suffix-file after.py
    run.py call entities MODEL "Grace Hopper visited Paris." [--aggregation simple|first|average|max|none]  (alias: ner)
    run.py call summarize MODEL "a long text ..." | --file article.txt [--max-new-tokens 128]
    run.py call speak MODEL "Hello there." [--out hello.wav] [--format wav|pcm_s16le|pcm_f32le] [--speed 1.0]
`speak` with MODEL `piper` uses the optional piper voice (scripts/setup.sh --piper). The answer goes to stdout
(speak: the file), a summary line to stderr. `describe(output)` and `save_audio` serve the generic
`pipeline` verb too.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from client.options import key_values
from protos import pythonml_pb2 as X
from protos import pythonml_pb2_grpc as XG


_options = key_values   # repeated --option key=value


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:   # a missing file: the CLI's one-line error
        return f.read()


def describe(o) -> list:
    """Printable lines for the entities of one PipelineOutput (token-classification)."""
    return [f"{e.label:10s} {e.score:.4f} [{e.start}:{e.end}] {e.text}" for e in o.entities]


def samples(o) -> np.ndarray:
    """The float samples of an audio output, whatever its encoding."""
    enc = o.encoding or "pcm_f32le"
    if enc == "wav":
        from common.audio import parse_wav
        x, _ = parse_wav(o.audio)
        return x.mean(axis=1) if x.ndim > 1 else x
    if enc == "pcm_s16le":
        return np.frombuffer(o.audio, "<i2").astype(np.float32) / 32767.0
    return np.frombuffer(o.audio, "<f4")


def save_audio(o, path: str, raw: bool = False) -> str:
    """Writes an audio output: as it came when raw (PCM as is, WAV as is), else always as a WAV file."""
    if raw or (o.encoding == "wav"):
        data = o.audio
    else:
        from common.audio import to_wav_bytes
        data = to_wav_bytes(samples(o), o.sample_rate)
    with open(path, "wb") as f:
        f.write(data)
    seconds = samples(o).size / max(1, o.sample_rate)
    return f"{seconds:.2f} s of audio at {o.sample_rate} Hz ({o.encoding or 'pcm_f32le'}) -> {path}"


def _run(args, channel, pipeline_type: str, inputs: list, options: dict):
    t0 = time.perf_counter()
    r = XG.PipelinesStub(channel).Run(X.PipelineRequest(model=args.model, pipeline_type=pipeline_type, inputs=inputs,
                                                        options=options), timeout=args.timeout)
    return r, t0


def _summary(r, t0, extra: str = "") -> None:
    print(f"[{r.pipeline_type} on {r.model}: {r.processing_s * 1000:.0f} ms worker time, "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms total{extra}]", file=sys.stderr)


def cmd_complete(args, channel) -> int:
    prefix = _read(args.prefix_file) if args.prefix_file else (args.prefix or "")
    suffix = _read(args.suffix_file) if args.suffix_file else args.suffix
    if not prefix and not suffix:
        raise SystemExit("complete: give a PREFIX (or --prefix-file), and --suffix for fill-in-the-middle")
    inputs = ([X.PipelineInput(text=prefix, role="prefix")] if prefix else []) + \
             ([X.PipelineInput(text=suffix, role="suffix")] if suffix else [])
    opts = _options(args.option)
    opts.setdefault("max_new_tokens", str(args.max_new_tokens))
    r, t0 = _run(args, channel, "code-completion", inputs, opts)
    o = r.outputs[0]
    sys.stdout.write(o.text + ("" if o.text.endswith("\n") else "\n"))
    _summary(r, t0, f", {len(o.token_ids)} tokens" + (", fill-in-the-middle" if suffix else ""))
    return 0


def cmd_entities(args, channel) -> int:
    opts = _options(args.option)
    opts.setdefault("aggregation", args.aggregation)
    r, t0 = _run(args, channel, "token-classification", [X.PipelineInput(text=t) for t in args.texts], opts)
    for i, o in enumerate(r.outputs):
        lines = describe(o)
        for line in lines or ["(no entities)"]:
            print(f"[{i}] {line}" if len(r.outputs) > 1 else line)
    _summary(r, t0)
    return 0


def cmd_summarize(args, channel) -> int:
    texts = list(args.texts) + ([_read(args.file)] if args.file else [])
    if not texts:
        raise SystemExit("summarize: give a TEXT or --file")
    opts = _options(args.option)
    if args.max_new_tokens:
        opts.setdefault("max_new_tokens", str(args.max_new_tokens))
    r, t0 = _run(args, channel, "summarization", [X.PipelineInput(text=t) for t in texts], opts)
    for i, o in enumerate(r.outputs):
        print(f"[{i}] {o.text}" if len(r.outputs) > 1 else o.text)
    _summary(r, t0)
    return 0


def cmd_speak(args, channel) -> int:
    opts = _options(args.option)
    opts.setdefault("format", args.format)
    if args.speed is not None:
        opts.setdefault("speed", str(args.speed))
    r, t0 = _run(args, channel, "text-to-speech", [X.PipelineInput(text=t) for t in args.texts], opts)
    for i, o in enumerate(r.outputs):
        out = args.out or ("speech.wav" if o.encoding in ("", "wav") or not args.raw else "speech.pcm")
        if len(r.outputs) > 1:
            base, ext = os.path.splitext(out)
            out = f"{base}_{i}{ext}"
        print(save_audio(o, out, raw=args.raw))
    _summary(r, t0)
    return 0


def _verb(sub, name: str, func, help: str, options: str, texts: str = "", aliases=()):
    """A text verb's parser: MODEL, then TEXTS (`texts` = their nargs) when given, and repeated --option
    key=value (`options` names the keys); the caller adds its own flags."""
    p = sub.add_parser(name, aliases=list(aliases), help=help)
    p.add_argument("model")
    if texts:
        p.add_argument("texts", nargs=texts)
    p.add_argument("--option", action="append", help=f"key=value: {options}")
    p.set_defaults(func=func)
    return p


def register(sub) -> None:
    p = _verb(sub, "complete", cmd_complete, "code completion; fill-in-the-middle with --suffix",
              "temperature, top_p, seed, stop")
    p.add_argument("prefix", nargs="?", default="", help="the code before the cursor")
    p.add_argument("--suffix", default=None, help="the code after the cursor (fill-in-the-middle)")
    p.add_argument("--prefix-file", default="")
    p.add_argument("--suffix-file", default="")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p = _verb(sub, "entities", cmd_entities, "named entities with character offsets", "ignore_labels, stride",
              texts="+", aliases=["ner"])
    p.add_argument("--aggregation", default="simple", choices=["simple", "first", "average", "max", "none"])
    p = _verb(sub, "summarize", cmd_summarize, "summaries by an encoder-decoder model",
              "min_new_tokens, num_beams, prefix, truncate", texts="*")
    p.add_argument("--file", default="", help="a UTF-8 text file to summarise")
    p.add_argument("--max-new-tokens", type=int, default=0, help="default: the model's summarization setting")
    p = _verb(sub, "speak", cmd_speak, "text-to-speech into a WAV file (MODEL 'piper': the optional piper voice)",
              "seed", texts="+")
    p.add_argument("--out", default="", help="output file (default speech.wav; one per text: speech_0.wav ...)")
    p.add_argument("--format", default="wav", choices=["wav", "pcm_s16le", "pcm_f32le"], help="what the service sends")
    p.add_argument("--raw", action="store_true", help="write PCM formats as raw samples instead of a WAV file")
    p.add_argument("--speed", type=float, default=None, help="speaking rate (1.0; 0.25..4)")
