"""HF verbs for `python run.py call`: generate, chat (streams to the terminal), embed, load, unload, models.

    run.py call generate "Once upon a time" --model SmolLM2-135M-Instruct --max-length 64
    run.py call chat "What is the capital of France?" --system "Be brief." --temperature 0
    run.py call embed "first text" "second text" --model all-MiniLM-L6-v2
    run.py call load all-MiniLM-L6-v2 --pipeline feature-extraction --option max_batch=64
    run.py call unload all-MiniLM-L6-v2
    run.py call models
"""
from __future__ import annotations

import re
import sys
import time

from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG


_NEG_ZERO = re.compile(r"(?<![\w.])-0(?:\.0+)?(?= MB)")


def _stream_to_terminal(pieces, get_text) -> tuple[int, object, float, float]:
    t0 = time.perf_counter()
    first = None
    n, last = 0, None
    for p in pieces:
        if first is None:
            first = time.perf_counter() - t0
        sys.stdout.write(get_text(p))
        sys.stdout.flush()
        n += 1
        last = p
    sys.stdout.write("\n")
    return n, last, first or 0.0, time.perf_counter() - t0


def cmd_generate(args, channel) -> int:
    stub = MLG.TransformersServiceStub(channel)
    req = ML.TextRequest(prompt=args.prompt, model=args.model, max_length=args.max_length,
                         temperature=args.temperature, top_p=args.top_p)
    n, last, ttft, total = _stream_to_terminal(stub.GenerateText(req, timeout=args.timeout), lambda p: p.text)
    toks = last.tokens_generated if last is not None else 0
    print(f"[{toks} tokens in {n} pieces, first after {ttft * 1000:.0f} ms, {toks / max(total, 1e-9):.1f} tokens/s]",
          file=sys.stderr)
    return 0


def cmd_chat(args, channel) -> int:
    stub = MLG.TransformersServiceStub(channel)
    msgs = [ML.ChatMessage(role="system", content=args.system)] if args.system else []
    msgs.append(ML.ChatMessage(role="user", content=args.message))
    req = ML.ChatRequest(messages=msgs, model=args.model, temperature=args.temperature)
    n, last, ttft, total = _stream_to_terminal(stub.ChatCompletion(req, timeout=args.timeout), lambda p: p.content)
    reason = last.finish_reason if last is not None else "?"
    print(f"[finish_reason={reason}, {n} pieces, first after {ttft * 1000:.0f} ms, {total:.2f} s]", file=sys.stderr)
    return 0


def cmd_embed(args, channel) -> int:
    import numpy as np
    stub = MLG.TransformersServiceStub(channel)
    t0 = time.perf_counter()
    resp = stub.GenerateEmbeddings(ML.GenerateEmbeddingsRequest(texts=args.texts, model=args.model), timeout=args.timeout)
    dt = time.perf_counter() - t0
    vecs = [np.asarray(e.values, dtype=np.float32) for e in resp.embeddings]
    for text, v in zip(args.texts, vecs):
        head = " ".join(f"{x:+.4f}" for x in v[:4])
        print(f"dim={len(v)} norm={np.linalg.norm(v):.4f} [{head} ...]  {text[:60]!r}")
    if len(vecs) > 1:
        m = np.stack(vecs)
        m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        print("cosine similarity:")
        for i, row in enumerate(m @ m.T):
            print("  " + " ".join(f"{x:6.3f}" for x in row) + f"   [{i}]")
    print(f"[{len(vecs)} vectors in {dt * 1000:.0f} ms]", file=sys.stderr)
    return 0


def cmd_load(args, channel) -> int:
    opts = {}
    for kv in args.option or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"load: --option takes KEY=VALUE, got {kv!r}")
        opts[k] = v
    if args.device:
        opts["device"] = args.device
    if args.dtype:
        opts["dtype"] = args.dtype
    stub = MLG.ModelManagementServiceStub(channel)
    r = stub.LoadModel(ML.LoadModelRequest(model_id=args.model_id, pipeline_type=args.pipeline, options=opts),
                       timeout=args.timeout)
    print(f"{'ok' if r.success else 'FAILED'}: {r.message} (RAM +{r.ram_allocated_mb} MB, VRAM +{r.vram_allocated_mb} MB)")
    return 0 if r.success else 1


def cmd_unload(args, channel) -> int:
    r = MLG.ModelManagementServiceStub(channel).UnloadModel(ML.UnloadModelRequest(model_id=args.model_id),
                                                             timeout=args.timeout)
    # the message carries the service's measured figure ("freed N MB RAM": RSS after gc + malloc_trim); a
    # tiny negative delta rounded by an older service reads "-0", which means nothing came back: 0
    print(f"{'ok' if r.success else 'FAILED'}: {_NEG_ZERO.sub('0', r.message)}")
    return 0 if r.success else 1


def cmd_models(args, channel) -> int:
    r = MLG.ModelManagementServiceStub(channel).GetLoadedModels(ML.EmptyRequest(), timeout=args.timeout)
    if not r.models:
        print("no models loaded")
        return 0
    print(f"{'model':48s} {'pipeline':20s} {'RAM MB':>8s} {'VRAM MB':>8s}  loaded")
    for m in r.models:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.loaded_at)) if m.loaded_at else "-"
        print(f"{m.model_id:48s} {m.pipeline_type:20s} {m.ram_mb:8d} {m.vram_mb:8d}  {when}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="stream generated text (TransformersService/GenerateText)")
    p.add_argument("prompt")
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--max-length", type=int, default=256, help="new tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("chat", help="one chat turn, streamed to the terminal (TransformersService/ChatCompletion)")
    p.add_argument("message")
    p.add_argument("--system", default="")
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("embed", help="embedding vectors and their cosine similarities")
    p.add_argument("texts", nargs="+")
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("load", help="load a model (ModelManagementService/LoadModel)")
    p.add_argument("model_id")
    p.add_argument("--pipeline", default="", help="text-generation | feature-extraction | ... (default: from the model)")
    p.add_argument("--device", default="")
    p.add_argument("--dtype", default="")
    p.add_argument("--option", action="append", help="KEY=VALUE load option (repeatable)")
    p.set_defaults(func=cmd_load)
    p = sub.add_parser("unload", help="unload a model and print the memory it gave back")
    p.add_argument("model_id")
    p.set_defaults(func=cmd_unload)
    p = sub.add_parser("models", help="loaded models with their measured memory")
    p.set_defaults(func=cmd_models)
