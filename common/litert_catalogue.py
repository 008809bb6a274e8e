"""The LiteRT model catalogue: built-in aliases, the .tflite files shipped inside installed packages, by file stem.

Shared by the litert worker (loader) and the facade (KServe RepositoryIndex lists them), so it lives below both.

mediapipe 0.10.21 bundles its legacy-solution models (``face_detection_short_range``, ``palm_detection_lite``,
``selfie_segmentation``, ...); pymicro-wakeword bundles full-int8 streaming models (``okay_nabu``, ...).
The packages are located with importlib's spec finder, so nothing is imported (``import mediapipe`` costs
seconds). Aliases may also be written with their package prefix: ``mediapipe/face_detection_short_range``.
"""
from __future__ import annotations

import os
import threading
from typing import Dict, Optional

from common.model_access import package_dir

# package name -> folder inside the package that holds the .tflite files ("" = the whole package)
_PACKAGES = {"mediapipe": "modules", "pymicro_wakeword": "models"}

_lock = threading.Lock()
_cache: Optional[Dict[str, str]] = None


def _scan() -> Dict[str, str]:
    found: Dict[str, str] = {}
    for package, sub in _PACKAGES.items():
        base = package_dir(package)
        if base is None:
            continue
        root = os.path.join(base, sub) if sub else base
        for dirpath, _dirs, files in os.walk(root):
            for fname in sorted(files):
                if not fname.endswith(".tflite"):
                    continue
                stem = fname[: -len(".tflite")]
                path = os.path.join(dirpath, fname)
                found.setdefault(stem, path)
                found.setdefault(f"{package}/{stem}", path)
    return found


def aliases() -> Dict[str, str]:
    """{alias: absolute path} of every built-in model (scanned once per process)."""
    global _cache
    with _lock:
        if _cache is None:
            _cache = _scan()
        return dict(_cache)


def resolve(alias: str) -> Optional[str]:
    """Path of the built-in model called `alias` (with or without a '.tflite' suffix), or None."""
    name = alias[: -len(".tflite")] if alias.endswith(".tflite") else alias
    return aliases().get(name)


def short_names() -> list:
    """Sorted alias stems without package prefix, for error messages and listings."""
    return sorted(a for a in aliases() if "/" not in a)
