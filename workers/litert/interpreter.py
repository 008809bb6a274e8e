"""One ai_edge_litert Interpreter per loaded model, used under that model's lock.

The Interpreter is not thread-safe: every call that touches it (resize, set, invoke, get, reset) runs
with ``ModelInstance.lock`` held; different models run in parallel.

Options (per worker, overridable per model at load):
- ``threads``      XNNPACK / CPU kernel threads (>= 1);
- ``xnnpack``      False builds the interpreter with BUILTIN_WITHOUT_DEFAULT_DELEGATES (reference CPU path);
- ``gpu_delegate`` True tries a GPU delegate library (``gpu_delegate_library`` option or the
                   LITERT_GPU_DELEGATE variable, else libtensorflowlite_gpu_delegate.so); when it cannot be
                   loaded or cannot take the graph the model runs on the CPU, and ``notes`` says why.

Signatures: a model with SignatureDefs exposes each one (KServe model version = signature key) with the
signature's own input/output names; a model without exposes its input/output tensors by tensor name as
version "1". Models with resource variables (VAR_HANDLE / READ_VARIABLE / ASSIGN_VARIABLE, e.g. streaming
keyword spotters) keep their state between calls; ``reset_state()`` rebuilds the interpreter from the
model bytes, the only reset that also clears resource variables (``reset_all_variables`` does not).
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from workers.context import WorkerError
from workers.litert import errors
from workers.litert.tensors import TensorSpec, spec_from_details

DEFAULT_VERSION = "1"
_STATE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}
_GPU_LIBRARIES = ("libtensorflowlite_gpu_delegate.so",)


@dataclass
class Signature:
    key: str                        # "" for a model without SignatureDefs
    version: str                    # KServe model version that selects it
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]

    def input(self, name: str) -> Optional[TensorSpec]:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> Optional[TensorSpec]:
        return next((s for s in self.outputs if s.name == name), None)


@dataclass
class RuntimeOptions:
    threads: int = 1
    xnnpack: bool = True
    gpu_delegate: bool = False
    gpu_delegate_library: str = ""

    def describe(self) -> str:
        return f"{'XNNPACK' if self.xnnpack else 'reference CPU kernels'}, {self.threads} thread(s)"


@dataclass
class ModelInstance:
    model_id: str
    content: bytes
    source: str
    options: RuntimeOptions
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("litert"))

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.notes: List[str] = []
        self.accelerator = "cpu"
        self.signatures: Dict[str, Signature] = {}
        self.default_version = DEFAULT_VERSION
        self.stateful = False
        self.invocations = 0
        self.loaded_at = time.time()
        self._interp = None
        self._runners: Dict[str, object] = {}
        self._delegate = None
        self._cur_shapes: Dict[int, tuple] = {}
        self._build(first=True)

    # ---- construction -----------------------------------------------------------------------
    def _gpu_delegate(self):
        from ai_edge_litert.interpreter import load_delegate
        libs = [self.options.gpu_delegate_library or os.environ.get("LITERT_GPU_DELEGATE", "")]
        libs = [x for x in libs if x] or list(_GPU_LIBRARIES)
        reasons = []
        for lib in libs:
            try:
                ctypes.CDLL(lib)  # fails cleanly when absent (load_delegate would leave a half-built object)
                return load_delegate(lib), lib
            except (OSError, ValueError, RuntimeError, AttributeError) as exc:
                reasons.append(f"{lib}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
        raise RuntimeError("; ".join(reasons))

    def _new_interpreter(self):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        resolver = OpResolverType.AUTO if self.options.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        kwargs = dict(model_content=self.content, num_threads=max(1, int(self.options.threads)),
                      experimental_op_resolver_type=resolver)
        if self.options.gpu_delegate:
            if self._delegate is None:
                try:
                    self._delegate, lib = self._gpu_delegate()
                    self.notes.append(f"GPU delegate loaded from {lib}")
                except RuntimeError as exc:
                    self.notes.append(f"GPU delegate unavailable ({exc}); running on the CPU "
                                      f"({self.options.describe()})")
                    self.options.gpu_delegate = False
            if self._delegate is not None:
                try:
                    it = Interpreter(experimental_delegates=[self._delegate], **kwargs)
                    it.allocate_tensors()
                    self.accelerator = "gpu"
                    return it
                except (RuntimeError, ValueError) as exc:
                    self.notes.append(f"GPU delegate could not take this model ({str(exc).strip().splitlines()[0]}); "
                                      f"running on the CPU ({self.options.describe()})")
                    self._delegate = None
                    self.options.gpu_delegate = False
        it = Interpreter(**kwargs)
        it.allocate_tensors()
        self.accelerator = "cpu-xnnpack" if self.options.xnnpack else "cpu-reference"
        return it

    def _build(self, first: bool) -> None:
        try:
            interp = self._new_interpreter()
        except WorkerError:
            raise
        except Exception as exc:  # RuntimeError (prepare), ValueError (bad flatbuffer), ...
            raise errors.load_error(self.model_id, self.source, exc) from None
        runners: Dict[str, object] = {}
        sig_list = interp.get_signature_list() or {}
        if first:
            self.signatures = self._read_signatures(interp, sig_list)
            self.stateful = self._has_state_ops(interp)
            for note in self.notes:
                self.log.warning("model %s: %s", self.model_id, note)
        for key in sig_list:
            runners[key] = interp.get_signature_runner(key)
        self._interp, self._runners = interp, runners
        self._cur_shapes = {int(d["index"]): tuple(int(x) for x in d["shape"]) for d in interp.get_input_details()}

    def _read_signatures(self, interp, sig_list) -> Dict[str, Signature]:
        sigs: Dict[str, Signature] = {}
        if not sig_list:
            inputs = [spec_from_details(d["name"], d) for d in interp.get_input_details()]
            outputs = [spec_from_details(d["name"], d) for d in interp.get_output_details()]
            sigs[DEFAULT_VERSION] = Signature("", DEFAULT_VERSION, inputs, outputs)
            self.default_version = DEFAULT_VERSION
            return sigs
        for key in sig_list:
            runner = interp.get_signature_runner(key)
            ins = runner.get_input_details()
            outs = runner.get_output_details()
            sigs[key] = Signature(key, key, [spec_from_details(n, d) for n, d in ins.items()],
                                  [spec_from_details(n, d) for n, d in outs.items()])
            del runner
        self.default_version = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        return sigs

    @staticmethod
    def _has_state_ops(interp) -> bool:
        try:
            ops = interp._get_ops_details()  # noqa: SLF001 - the only way to list op names
        except Exception:
            return False
        return any(op.get("op_name") in _STATE_OPS for op in ops)

    # ---- queries ----------------------------------------------------------------------------
    @property
    def versions(self) -> List[str]:
        return list(self.signatures)

    def signature(self, version: str) -> Signature:
        key = version or self.default_version
        sig = self.signatures.get(key)
        if sig is None and key == DEFAULT_VERSION:
            sig = self.signatures.get(self.default_version)
        if sig is None:
            raise WorkerError("NOT_FOUND",
                              f"model '{self.model_id}' has no version/signature '{version}'; "
                              f"available: {', '.join(self.versions)}")
        return sig

    def size_mb(self) -> float:
        return len(self.content) / 2**20

    # ---- execution --------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget streaming state (resource variables and variable tensors). Call with the lock held."""
        if self.stateful:
            self._runners = {}
            self._interp = None
            self._build(first=False)
        else:
            self._interp.reset_all_variables()

    def run(self, sig: Signature, feeds: Dict[str, np.ndarray],
            wanted: Sequence[TensorSpec]) -> List[np.ndarray]:
        """Run one signature. `feeds` maps every input name to an array; returns `wanted` outputs in order.

        Call with ``self.lock`` held.
        """
        try:
            if sig.key:
                result = self._runners[sig.key](**feeds)
                out = [np.asarray(result[s.name]) for s in wanted]
            else:
                interp = self._interp
                resized = False
                for spec in sig.inputs:
                    arr = feeds[spec.name]
                    if self._cur_shapes.get(spec.index) != arr.shape:
                        interp.resize_tensor_input(spec.index, list(arr.shape), strict=False)
                        self._cur_shapes[spec.index] = arr.shape
                        resized = True
                if resized:
                    interp.allocate_tensors()
                for spec in sig.inputs:
                    interp.set_tensor(spec.index, feeds[spec.name])
                interp.invoke()
                out = [interp.get_tensor(s.index) for s in wanted]
        except WorkerError:
            raise
        except Exception as exc:
            raise errors.invoke_error(self.model_id, exc) from None
        self.invocations += 1
        return out

    def close(self) -> None:
        with self.lock:
            self._runners = {}
            self._interp = None
            self._delegate = None
