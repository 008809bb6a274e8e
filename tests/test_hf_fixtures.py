"""Helpers for the HF worker tests (no tests here): tiny random-weight models built on the spot,
an in-process HFWorker and a GenerateText call on it (with a cancel at the n-th piece), and a fake
orchestrator GetModelFile server.
"""
from __future__ import annotations

import json
import os
import threading
from concurrent import futures
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

LINES = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "to be or not to be that is the question",
    "all that glitters is not gold",
    "the capital of france is paris and the capital of italy is rome",
    "numbers: 0 1 2 3 4 5 6 7 8 9 and symbols ! ? . , ; : - +",
] * 4


def build_tokenizer(out: Path, eos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(LINES, trainer)
    kw = dict(bos_token="<s>", unk_token="<unk>")
    if eos:
        kw["eos_token"] = "</s>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.save_pretrained(out)
    return fast


def build_tiny_llama(out: Path, eos: bool = False, shard: str = "", ctx: int = 2048) -> Path:
    """Random-weight 2-layer Llama; with eos=False it never stops before max_length."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, eos)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx,
                      bos_token_id=1, eos_token_id=2 if eos else None, pad_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    if not eos:
        model.generation_config.eos_token_id = None
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out, **kw)
    return out


def build_tiny_bert(out: Path) -> Path:
    """Random-weight BERT encoder (plain transformers dir, no modules.json)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = sorted({w for line in LINES for w in line.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})   # transformers 5 ignores vocab_file=
    tok.save_pretrained(out)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    return out


def make_worker(**options):
    """The HFService of an HFWorker set up in this process (no broker): call its handlers directly with
    make_test_context."""
    from workers.base import worker_arg_parser
    from workers.hf_worker import HFWorker
    device = options.pop("device", "cpu")
    options.setdefault("threads", 1)
    args = worker_arg_parser("hf").parse_args(["--connect", "inproc://unused", "--worker-id", "hf-test",
                                               "--device", device, "--options-json", json.dumps(options)])
    w = HFWorker(args)
    w.setup()
    return w.service


def generate_text(worker, req, on_partial=None, **header):
    """GenerateText of `req` (a TextRequest) on an in-process service: (the partial TextResponses, the final
    one). on_partial(ctx, parts), if given, runs after each partial with the serialized partials so far."""
    from protos import ml_inference_pb2 as ML
    from workers.context import make_test_context
    ctx, parts = make_test_context("ml.TransformersService/GenerateText", payload=req.SerializeToString(),
                                   model=req.model, **header)
    if on_partial is not None:
        def send(b):
            parts.append(b)
            on_partial(ctx, parts)
        ctx._send_partial = send
    final = ML.TextResponse.FromString(worker.generate_text(ctx))
    return [ML.TextResponse.FromString(p) for p in parts], final


def cancel_at_partial(n: int, seen: dict):
    """An on_partial for generate_text that cancels the request at its n-th partial: seen["at_cancel"] holds
    the tokens generated then, seen["last"] those of the last partial sent."""
    from protos import ml_inference_pb2 as ML

    def on_partial(ctx, parts):
        tokens = ML.TextResponse.FromString(parts[-1]).tokens_generated
        if len(parts) == n:
            seen["at_cancel"] = tokens
            ctx.cancelled.set()
        seen["last"] = tokens
    return on_partial


class FakeFileService:
    """A fake orchestrator serving GetModelFile from a folder, with fault injection.

    break_once: set of file paths whose first stream is cut half-way (UNAVAILABLE after some chunks).
    """

    def __init__(self, root: Path, model_id: str, chunk: int = 4096, break_once=()):
        import grpc
        from protos import ml_inference_pb2 as ML
        from protos import ml_inference_pb2_grpc as MLG
        self.root, self.model_id, self.chunk = Path(root), model_id, chunk
        self.break_once = set(break_once)
        self.requests: list[str] = []
        svc = self

        class Servicer(MLG.ModelManagementServiceServicer):
            def GetModelFile(self, request, context):
                svc.requests.append(request.file_path)
                if request.model_id != svc.model_id:
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_id}")
                p = (svc.root / request.file_path).resolve()
                if not str(p).startswith(str(svc.root.resolve()) + os.sep) or not p.is_file():
                    context.abort(grpc.StatusCode.NOT_FOUND, f"no file {request.file_path}")
                data = p.read_bytes()
                total = len(data)
                broken = request.file_path in svc.break_once
                svc.break_once.discard(request.file_path)
                offsets = list(range(0, total, svc.chunk)) or [0]
                # send chunks out of order (last-but-one first) to exercise reassembly by offset
                if len(offsets) > 2:
                    offsets[0], offsets[1] = offsets[1], offsets[0]
                for i, off in enumerate(offsets):
                    if broken and i == len(offsets) // 2:
                        context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
                    yield ML.ModelFileChunk(data=data[off:off + svc.chunk], offset=off, total_size=total,
                                            is_last=(i == len(offsets) - 1))

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        MLG.add_ModelManagementServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self):
        self.server.stop(0)


def run_threads(fns):
    out = [None] * len(fns)
    errs = [None] * len(fns)

    def run(i, fn):
        try:
            out[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errs[i] = exc
    ts = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(fns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return out, errs
