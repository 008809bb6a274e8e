#!/usr/bin/env python3
"""Build the built-in LiteRT-LM bundle (SmolLM2-135M-Instruct.litertlm) from the converted SmolLM2 folder.

Runs in its own virtual environment, `.venv-litertlm-build/` (requirements-litertlm-build.txt: litert-torch
needs protobuf 6 and TensorFlow's flatbuffer schema module, the runtime pins protobuf 4), never in `.venv`:

    .venv-litertlm-build/bin/python scripts/build_litertlm.py --input <safetensors folder> --gguf-key <key>

scripts/prepare_models.py starts it (scripts/setup.sh --dev or --litertlm); it does nothing when the bundle
for the current input hash (common/litertlm_builtin.py) is complete. litert-torch's `export` traces the model
with torch.export, converts it to LiteRT with int8 weights (dynamic_wi8_afp32) and packages the tokenizer,
the chat template and the metadata: about 80 s and 3.5 GB of RAM on two cores, a 143 MB file. It writes into
a temporary folder next to the target and renames it into place under a file lock; `.complete` is last, so an
interrupted build never looks done. Older bundles (other input hashes) are removed afterwards.
Nothing is downloaded: the input is a local folder, hub access is switched off.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import litertlm_builtin as B  # noqa: E402  (stdlib only: fine in the build environment)

SHIM = "from ai_edge_litert.schema_py_generated import *  # noqa: F401,F403\n"


def install_tensorflow_shim(folder: Path) -> None:
    """litert-torch imports `tensorflow.lite.python.schema_py_generated` without declaring TensorFlow; the same
    generated module ships in ai-edge-litert. A package folder on sys.path re-exports it (nothing else of
    TensorFlow is needed by the text-generation export)."""
    pkg = folder / "tensorflow" / "lite" / "python"
    pkg.mkdir(parents=True, exist_ok=True)
    for d in (folder / "tensorflow", folder / "tensorflow" / "lite", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "schema_py_generated.py").write_text(SHIM)
    sys.path.insert(0, str(folder))


def export_bundle(src: Path, work: Path) -> Path:
    from litert_torch.generative.export_hf import export as E
    from litert_torch.generative.export_hf.core import litert_lm_builder
    recipe = {k: v for k, v in B.RECIPE.items() if k != "recipe"}
    litert_lm_builder._STOP_TOKEN_PREFIXES = tuple(recipe.pop("stop_token_prefixes"))   # see common/litertlm_builtin.py
    template = work.parent / "chat_template.jinja"     # litert-torch reads the override from a file
    template.write_text(recipe.pop("chat_template"))
    E.export(model=str(src), output_dir=str(work), jinja_chat_template_override=str(template), **recipe)
    out = sorted(work.glob("*.litertlm"))
    if not out:
        raise RuntimeError(f"litert-torch finished without writing a .litertlm file into {work}")
    return out[0]


def prune(current: Path) -> None:
    """Remove bundles of other input hashes (~140 MB each) and their lock files."""
    for old in B.cache_root().iterdir():
        if old == current or old.name in (f".{current.name}.lock",) or ".tmp-" in old.name:
            continue
        if old.is_dir() and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
            print(f"removed an older bundle ({old.name})", flush=True)
        elif old.name.startswith(".") and old.name.endswith(".lock"):
            old.unlink(missing_ok=True)


def build(src: Path, gguf_key: str) -> Path:
    target = B.bundle_dir(gguf_key)
    done = B.built_bundle(gguf_key)
    if done is not None:
        return done
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # a second set-up waits for the first and finds the bundle
        done = B.built_bundle(gguf_key)
        if done is not None:
            return done
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o755)   # mkdtemp makes it private; the bundle is readable like the rest of the cache
        try:
            install_tensorflow_shim(tmp / "shim")
            t0 = time.time()
            bundle = export_bundle(src, tmp / "export")
            os.replace(bundle, tmp / B.BUNDLE_NAME)
            shutil.rmtree(tmp / "export", ignore_errors=True)
            shutil.rmtree(tmp / "shim", ignore_errors=True)
            (tmp / "build.json").write_text(json.dumps({
                "input": str(src), "gguf_key": gguf_key, "input_hash": target.name,
                "seconds": round(time.time() - t0, 1),
                "recipe": {k: v for k, v in B.RECIPE.items() if k != "chat_template"}}, indent=1))
            (tmp / ".complete").write_text(f"{B.BUNDLE_NAME} from {src}\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    prune(target)
    return target / B.BUNDLE_NAME


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="the converted SmolLM2 safetensors folder")
    ap.add_argument("--gguf-key", required=True, help="content key of the GGUF it came from (names the cache folder)")
    a = ap.parse_args()
    src = Path(a.input)
    if not (src / "config.json").is_file():
        print(f"build_litertlm: {src} is not a model folder (no config.json)", file=sys.stderr)
        return 2
    out = build(src, a.gguf_key)
    print(f"BUNDLE {out} {out.stat().st_size}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
