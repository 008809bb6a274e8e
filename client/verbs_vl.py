"""Vision-language verbs for `python run.py call` (pythonml.v1.Pipelines Run / RunStream).

    run.py call florence2 MODEL IMAGE [IMAGE ...] [--task OD] [--text "a red car"]   # boxes, quad boxes, text
    run.py call vlchat MODEL "What is in the picture?" --image photo.jpg [--system "Be brief"] [--no-stream]
    run.py call janus MODEL "What is in the picture?" --image photo.jpg
vlchat and janus stream the answer as it is generated (RunStream) unless --no-stream; the answer goes to
stdout, a summary (finish reason, tokens, time) to stderr. `describe(output)` is shared with the
generic `pipeline` verb.
"""
from __future__ import annotations

import sys
import time

from client.options import key_values
from protos import pythonml_pb2 as X
from protos import pythonml_pb2_grpc as XG


_options = key_values   # repeated --option key=value


def _image(path: str) -> X.PipelineInput:
    try:
        with open(path, "rb") as f:
            return X.PipelineInput(image=f.read())
    except OSError as exc:
        raise SystemExit(f"{path}: {exc.strerror or exc}") from None


def _nums(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def describe(o) -> list:
    """Printable lines for the typed vision outputs of one PipelineOutput (boxes, quad boxes, polygons)."""
    lines = []
    for b in o.boxes:
        lines.append(f"box {b.label or '-'} {_nums((b.x_min, b.y_min, b.x_max, b.y_max))}"
                     + (f" score={b.score:.4f}" if b.score else ""))
    for q in o.quad_boxes:
        lines.append(f"quad {q.label or '-'} {_nums(q.points)}")
    for p in o.polygons:
        lines.append(f"polygon {p.label or '-'} {len(p.points) // 2} points {_nums(p.points[:8])}"
                     + (" ..." if len(p.points) > 8 else ""))
    return lines


def cmd_florence2(args, channel) -> int:
    inputs = [_image(p) for p in args.images]
    if args.text:
        inputs.append(X.PipelineInput(text=args.text))
    opts = _options(args.option)
    if args.task:
        opts["task"] = args.task
    t0 = time.perf_counter()
    r = XG.PipelinesStub(channel).Run(X.PipelineRequest(model=args.model, pipeline_type="florence2", inputs=inputs,
                                                        options=opts), timeout=args.timeout)
    for path, o in zip(args.images, r.outputs):
        print(f"{path} {o.task}")
        for line in describe(o):
            print("  " + line)
        if o.text and not (o.boxes or o.quad_boxes or o.polygons) or args.raw:
            print(f"  text {o.text}")
    print(f"[{r.pipeline_type} on {r.model}: {r.processing_s * 1000:.0f} ms worker time, "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms total]", file=sys.stderr)
    return 0


def _chat(args, channel, pipeline_type: str) -> int:
    inputs = []
    if args.system:
        inputs.append(X.PipelineInput(text=args.system, role="system"))
    inputs += [_image(p) for p in args.image or []]
    inputs.append(X.PipelineInput(text=args.prompt))
    req = X.PipelineRequest(model=args.model, pipeline_type=pipeline_type, inputs=inputs, options=_options(args.option))
    stub = XG.PipelinesStub(channel)
    t0 = time.perf_counter()
    if args.no_stream:
        r = stub.Run(req, timeout=args.timeout)
        print(r.outputs[0].text)
    else:
        r = None
        for msg in stub.RunStream(req, timeout=args.timeout):
            if msg.done:
                r = msg
            elif msg.delta:
                sys.stdout.write(msg.delta)
                sys.stdout.flush()
        if r is None:
            print("the stream ended without an answer", file=sys.stderr)
            return 1
        print()
    o = r.outputs[0]
    print(f"[{r.pipeline_type} on {r.model}: {o.tokens_generated} tokens, finish {o.finish_reason}, "
          f"{r.processing_s * 1000:.0f} ms worker time, {(time.perf_counter() - t0) * 1000:.0f} ms total]",
          file=sys.stderr)
    return 0


def cmd_vlchat(args, channel) -> int:
    return _chat(args, channel, "image-text-to-text")


def cmd_janus(args, channel) -> int:
    return _chat(args, channel, "janus")


def register(sub) -> None:
    p = sub.add_parser("florence2", help="Florence-2 task on images: captions, OCR, boxes, quad boxes, polygons")
    p.add_argument("model")
    p.add_argument("images", nargs="+", help="image files (one answer each)")
    p.add_argument("--task", default="", help="<CAPTION> (default), <DETAILED_CAPTION>, <OD>, <OCR>, "
                                              "<OCR_WITH_REGION>, <DENSE_REGION_CAPTION>, ... (brackets optional)")
    p.add_argument("--text", default="", help="the task's input, e.g. the phrase for <CAPTION_TO_PHRASE_GROUNDING>")
    p.add_argument("--option", action="append", help="key=value (max_new_tokens, num_beams)")
    p.add_argument("--raw", action="store_true", help="also print the generated text of structured tasks")
    p.set_defaults(func=cmd_florence2)
    for name, func, what in (("vlchat", cmd_vlchat, "vision-language chat (image-text-to-text)"),
                             ("janus", cmd_janus, "Janus image understanding")):
        p = sub.add_parser(name, help=f"{what}: a prompt with images; streams the answer")
        p.add_argument("model")
        p.add_argument("prompt")
        p.add_argument("--image", action="append", help="image file (repeatable; placed before the prompt)")
        p.add_argument("--system", default="", help="system message")
        p.add_argument("--option", action="append", help="key=value (max_new_tokens, temperature, top_p)")
        p.add_argument("--no-stream", action="store_true", help="use Run (one answer) instead of RunStream")
        p.set_defaults(func=func)
