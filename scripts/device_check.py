"""One-shot GPU check (run on a machine with CUDA): hf worker on cuda:0 with measured VRAM figures,
streaming generation on the GPU, unload giving VRAM back, and the LiteRT GPU-delegate fallback.

Usage: python scripts/device_check.py OUT_DIR     (writes OUT_DIR/device_report.json and prints it)
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402


def build_model(out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from tests.test_hf_fixtures import build_tokenizer
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, eos=False)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = None
    model.save_pretrained(out)
    return out


def main(out_dir: str) -> int:
    from protos import ml_inference_pb2 as ML, ml_inference_pb2_grpc as MLG
    from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
    from tests.service import start_service
    report: dict = {"steps": []}

    def step(name, **kv):
        kv["step"] = name
        report["steps"].append(kv)
        print(json.dumps(kv), flush=True)

    try:
        import torch
        step("torch", version=torch.__version__, cuda=torch.cuda.is_available(),
             device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    except Exception as exc:
        step("torch", error=str(exc))
    tmp = Path(tempfile.mkdtemp())
    t0 = time.time()
    model_dir = build_model(tmp / "llama-25m")
    step("built model", seconds=round(time.time() - t0, 1),
         size_mb=round(sum(f.stat().st_size for f in model_dir.iterdir()) / 2**20, 1))
    tflite = ROOT / ".devcheck" / "face_detection_short_range.tflite"
    svc = start_service(["--pools", "hf@cpu,hf@cuda:0,litert", "--litert-gpu", "--log-level", "info"],
                        wait_service="ml.TransformersService", timeout=300)
    try:
        ch = svc.channel()
        mm, tf, st = MLG.ModelManagementServiceStub(ch), MLG.TransformersServiceStub(ch), XG.StatsStub(ch)

        def cuda_worker():
            for w in st.GetStats(X.StatsRequest(), timeout=10).workers:
                if w.device == "cuda:0":
                    return {"pid": w.pid, "state": w.state, "rss_mb": round(w.rss_mb, 1),
                            "cuda_allocated_mb": round(w.cuda_allocated_mb, 1),
                            "cuda_reserved_mb": round(w.cuda_reserved_mb, 1),
                            "models": [(m.model_id, round(m.vram_mb, 1)) for m in w.models]}
        step("stats before load", worker=cuda_worker())
        t0 = time.time()
        r = mm.LoadModel(ML.LoadModelRequest(model_id=str(model_dir), pipeline_type="text-generation",
                                             options={"device": "cuda:0", "dtype": "float16"}), timeout=300)
        step("load on cuda:0", success=r.success, message=r.message, vram_allocated_mb=r.vram_allocated_mb,
             ram_allocated_mb=r.ram_allocated_mb, seconds=round(time.time() - t0, 2))
        loaded = mm.GetLoadedModels(ML.EmptyRequest(), timeout=10)
        step("GetLoadedModels", models=[(m.model_id[-20:], m.pipeline_type, m.vram_mb, m.ram_mb) for m in loaded.models])
        time.sleep(1.5)
        step("stats after load", worker=cuda_worker())
        t0 = time.time()
        pieces, first = [], None
        for resp in tf.GenerateText(ML.TextRequest(prompt="the capital of france", model=str(model_dir),
                                                   max_length=64, temperature=0.0, top_p=0.9), timeout=120):
            if first is None:
                first = time.time() - t0
            pieces.append(resp)
        step("generate on cuda:0", pieces=len(pieces), tokens=pieces[-1].tokens_generated if pieces else 0,
             ttft_s=round(first or 0, 3), seconds=round(time.time() - t0, 2),
             text=("".join(p.text for p in pieces))[:80])
        u = mm.UnloadModel(ML.UnloadModelRequest(model_id=str(model_dir)), timeout=60)
        step("unload", success=u.success, message=u.message)
        time.sleep(3)
        step("stats after unload", worker=cuda_worker())
        if tflite.exists():
            try:
                r = mm.LoadModel(ML.LoadModelRequest(model_id=str(tflite), pipeline_type="tflite",
                                                     options={"gpu_delegate": "true"}), timeout=60)
                step("litert load with GPU delegate requested", success=r.success, message=r.message)
            except grpc.RpcError as exc:
                step("litert load with GPU delegate requested", code=exc.code().name, message=exc.details())
        else:
            step("litert", skipped="no tflite carried")
    except grpc.RpcError as exc:
        step("rpc error", code=exc.code().name, message=exc.details())
    finally:
        log = svc.log()
        code = svc.stop()
        step("service stopped", exit_code=code)
        Path(out_dir, "service.log").write_text(log[-200000:])
    Path(out_dir, "device_report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
