"""Request handlers of the litert pool, independent of the worker process plumbing.

KServe v2 (`inference.GRPCInferenceService`): ModelInfer, ModelMetadata, ModelReady.
Model management (`ml.ModelManagementService`): LoadModel, UnloadModel — the facade also routes the
KServe repository extension here, so there is one model list whichever API loaded a model: the worker's
registry (workers.base.ModelRegistry, passed in as `models`), each record carrying its ModelInstance as
`runtime`; every load and unload is announced through it (the worker tells the broker).

Model versions are signatures: a model without SignatureDefs has the single version "1"; a model with
SignatureDefs exposes each key as a version ("" = "serving_default", else the first). ModelInfer
parameters understood: ``signature`` (string, same as model_version), ``reset_state`` /
``sequence_start`` (bool: forget the model's streaming state before this call).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Callable, Dict, Optional

from common import methods
from common.load_options import check_load_options, thread_budget
from common.options import as_bool
from protos import ml_inference_pb2 as ML
from protos.kserve import grpc_service_pb2 as K
from workers.base import ModelRecord, ModelRegistry
from workers.context import RequestContext, WorkerError
from workers.litert import loader
from workers.litert.interpreter import ModelInstance, RuntimeOptions, Signature
from workers.litert.tensors import datatype_of, decode_input, output_bytes, quant_parameters

PIPELINE_TYPE = "tflite"
PLATFORM = "tflite"


def param_value(params, key: str):
    """Python value of a KServe InferParameter in `params` (a proto map), or None."""
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


class LiteRTService:
    def __init__(self, options: dict, device: str = "cpu", log: Optional[logging.Logger] = None,
                 measure_memory: Optional[Callable[[], dict]] = None, models: Optional[ModelRegistry] = None):
        self.options = dict(options or {})
        self.device = device or "cpu"
        self.log = log or logging.getLogger("litert")
        self._measure = measure_memory or (lambda: {})
        # the worker's one registry of loaded models (workers/base.py): records carry a ModelInstance as runtime
        self.models = models if models is not None else ModelRegistry()
        self._lock = threading.Lock()
        self._load_locks: Dict[str, threading.Lock] = {}
        self.auto_load = as_bool(self.options.get("auto_load"), True, "auto_load")

    def handlers(self) -> dict:
        return {methods.KSERVE_MODEL_INFER: self.model_infer,
                methods.KSERVE_MODEL_METADATA: self.model_metadata,
                methods.KSERVE_MODEL_READY: self.model_ready,
                methods.LOAD_MODEL: self.load_model,
                methods.UNLOAD_MODEL: self.unload_model}

    # ---- registry ---------------------------------------------------------------------------
    def loaded(self) -> Dict[str, ModelInstance]:
        """model id -> ModelInstance of every loaded model (a snapshot)."""
        return {r.model_id: r.runtime for r in self.models.records()}

    def _instance(self, name: str) -> Optional[ModelInstance]:
        record = self.models.get(name)
        return record.runtime if record is not None else None

    def runtime_options(self, overrides: dict) -> RuntimeOptions:
        """Request overrides (already allow-listed) over the worker's options; the delegate library is an
        operator setting only (--litert-gpu-delegate-library), never taken from a request."""
        def pick(key):
            return overrides.get(key) if overrides.get(key) not in (None, "") else self.options.get(key)
        budget = thread_budget(self.options)
        threads = overrides.get("threads")
        try:
            threads = int(threads) if threads not in (None, "", 0, "0") else min(4, budget)
        except (TypeError, ValueError):
            raise WorkerError("INVALID_ARGUMENT", f"threads must be an integer >= 1, got {threads!r}") from None
        if not 1 <= threads <= budget:
            raise WorkerError("INVALID_ARGUMENT", f"threads={threads} is outside 1..{budget} (this worker's thread budget)")
        gpu = pick("gpu_delegate")
        gpu = as_bool(gpu, False, "gpu_delegate") if gpu is not None else self.device.startswith(("cuda", "gpu"))
        return RuntimeOptions(threads=threads, xnnpack=as_bool(pick("xnnpack"), True, "xnnpack"), gpu_delegate=gpu,
                              gpu_delegate_library=str(self.options.get("gpu_delegate_library") or ""))

    def _memory_mb(self) -> float:
        m = self._measure() or {}
        return float(m.get("uss_mb") or m.get("rss_mb") or 0.0)

    def _load(self, model_id: str, opts: dict, frame: Optional[bytes], payload: bytes) -> tuple:
        check_load_options(opts, thread_budget(self.options))   # before any file is touched
        with self._lock:
            load_lock = self._load_locks.setdefault(model_id, threading.Lock())
        with load_lock:
            before = self._memory_mb()
            t0 = time.perf_counter()
            mb = loader.resolve(model_id, opts, frame, self.options)
            runtime = self.runtime_options(opts)
            inst = ModelInstance(model_id, mb.content, mb.source, runtime, log=self.log)
            load_s = time.perf_counter() - t0
            ram_mb = max(self._memory_mb() - before, inst.size_mb())
            replay = self._replay_payload(model_id, opts, mb, payload)
            old = self._instance(model_id)
            # requests find it from here on; the broker is told (replay, Stats)
            self.models.add(ModelRecord(model_id, PIPELINE_TYPE, ram_mb=round(ram_mb, 2), load_payload=replay,
                                        load_method=methods.LOAD_MODEL, runtime=inst))
            if old is not None:
                old.close()
            self.log.info("loaded %s from %s in %.3fs (%.1f MB, %s)", model_id, mb.source, load_s, ram_mb,
                          inst.accelerator)
            return inst, ram_mb, load_s

    def _replay_payload(self, model_id: str, opts: dict, mb: loader.ModelBytes, payload: bytes) -> bytes:
        """A LoadModelRequest that reproduces this load after a worker restart (uploaded bytes go to disk)."""
        if opts.get("content") == "frame":
            cache = self.options.get("cache_dir") or ""
            if cache:
                os.makedirs(cache, exist_ok=True)
                path = os.path.join(cache, f"litert-{hashlib.sha256(mb.content).hexdigest()[:24]}.tflite")
                if not os.path.exists(path):
                    tmp = path + f".{os.getpid()}.tmp"
                    with open(tmp, "wb") as f:
                        f.write(mb.content)
                    os.replace(tmp, path)
                new = {k: v for k, v in opts.items() if k != "content"}
                new["path"] = path
                return ML.LoadModelRequest(model_id=model_id, pipeline_type=PIPELINE_TYPE,
                                           options=new).SerializeToString()
        return payload or ML.LoadModelRequest(model_id=model_id, pipeline_type=PIPELINE_TYPE,
                                              options=opts).SerializeToString()

    def _get(self, name: str, auto: bool) -> ModelInstance:
        if not name:
            raise WorkerError("INVALID_ARGUMENT", "model name is empty")
        inst = self._instance(name)
        if inst is not None:
            return inst
        if not auto:
            raise WorkerError("NOT_FOUND", f"model '{name}' is not loaded in the litert pool; load it with "
                                           f"RepositoryModelLoad or ml.ModelManagementService/LoadModel")
        inst, _, _ = self._load(name, {}, None, b"")
        return inst

    # ---- KServe -----------------------------------------------------------------------------
    def model_ready(self, ctx: RequestContext) -> bytes:
        req = K.ModelReadyRequest.FromString(ctx.payload)
        inst = self._instance(req.name)
        ready = inst is not None and (not req.version or req.version in inst.signatures
                                      or req.version == "1")
        return K.ModelReadyResponse(ready=ready).SerializeToString()

    def model_metadata(self, ctx: RequestContext) -> bytes:
        req = K.ModelMetadataRequest.FromString(ctx.payload)
        inst = self._get(req.name, self.auto_load)
        sig = inst.signature(req.version)
        resp = K.ModelMetadataResponse(name=req.name, versions=inst.versions, platform=PLATFORM)
        has_params = "parameters" in K.ModelMetadataResponse.TensorMetadata.DESCRIPTOR.fields_by_name
        for specs, target in ((sig.inputs, resp.inputs), (sig.outputs, resp.outputs)):
            for spec in specs:
                t = target.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
                if has_params:  # only if the proto grows a parameters map on TensorMetadata
                    quant_parameters(spec, t.parameters)
        return resp.SerializeToString()

    @staticmethod
    def _list(specs) -> str:
        return "; ".join(s.describe() for s in specs) or "(none)"

    def _feeds(self, req, inst: ModelInstance, sig: Signature, raws) -> dict:
        if raws and len(raws) != len(req.inputs):
            raise WorkerError("INVALID_ARGUMENT", f"{len(raws)} raw_input_contents for {len(req.inputs)} inputs; "
                                                  f"send one raw entry per input, in order")
        feeds = {}
        for i, tensor in enumerate(req.inputs):
            spec = sig.input(tensor.name)
            if spec is None:
                raise WorkerError("INVALID_ARGUMENT",
                                  f"model '{inst.model_id}' has no input '{tensor.name}'; its inputs are: "
                                  f"{self._list(sig.inputs)}")
            if tensor.name in feeds:
                raise WorkerError("INVALID_ARGUMENT", f"input '{tensor.name}' was sent twice")
            feeds[tensor.name] = decode_input(tensor, raws[i] if raws else None, spec)
        missing = [s for s in sig.inputs if s.name not in feeds]
        if missing:
            raise WorkerError("INVALID_ARGUMENT",
                              f"model '{inst.model_id}' needs input(s) {self._list(missing)}; missing from the request")
        return feeds

    def model_infer(self, ctx: RequestContext) -> bytes:
        req = K.ModelInferRequest.FromString(ctx.payload)
        inst = self._get(req.model_name, self.auto_load)
        signature = param_value(req.parameters, "signature")
        sig = inst.signature(req.model_version or (str(signature) if signature else ""))
        # raw input tensors: in the message, or (big ones) beside it in shared memory (common/payload.py)
        feeds = self._feeds(req, inst, sig, ctx.side.pieces(req, "raw_input_contents", "raw_input_contents"))
        if req.outputs:
            wanted = []
            for o in req.outputs:
                spec = sig.output(o.name)
                if spec is None:
                    raise WorkerError("INVALID_ARGUMENT",
                                      f"model '{inst.model_id}' has no output '{o.name}'; its outputs are: "
                                      f"{self._list(sig.outputs)}")
                wanted.append(spec)
        else:
            wanted = sig.outputs
        reset = (as_bool(param_value(req.parameters, "reset_state"), False, "reset_state")
                 or as_bool(param_value(req.parameters, "sequence_start"), False, "sequence_start"))
        ctx.check_cancelled()
        left = ctx.time_left()
        if not inst.lock.acquire(timeout=-1 if left is None else max(0.0, left)):
            raise WorkerError("DEADLINE_EXCEEDED", f"model '{inst.model_id}' was busy until the deadline passed")
        try:
            ctx.check_cancelled()
            if reset:
                inst.reset_state()
            arrays = inst.run(sig, feeds, wanted)
        finally:
            inst.lock.release()
        resp = K.ModelInferResponse(model_name=req.model_name, model_version=sig.version, id=req.id)
        for spec, arr in zip(wanted, arrays):
            dt = datatype_of(arr.dtype)
            out = resp.outputs.add(name=spec.name, datatype=dt, shape=list(arr.shape))
            quant_parameters(spec, out.parameters)
            resp.raw_output_contents.append(output_bytes(arr, dt))
        if inst.stateful:
            resp.parameters["stateful"].bool_param = True
        return resp.SerializeToString()

    # ---- model management -------------------------------------------------------------------
    def load_model(self, ctx: RequestContext) -> bytes:
        req = ML.LoadModelRequest.FromString(ctx.payload)
        model_id = req.model_id.strip()
        if not model_id:
            raise WorkerError("INVALID_ARGUMENT", "LoadModel: model_id is empty")
        if req.pipeline_type and req.pipeline_type not in (PIPELINE_TYPE, "litert", "tensor"):
            raise WorkerError("INVALID_ARGUMENT", f"the litert pool loads pipeline_type 'tflite', not "
                                                  f"'{req.pipeline_type}'")
        opts = dict(req.options)
        frame = None
        if opts.get("content") == "frame":   # the uploaded .tflite travels beside the request
            view = ctx.side.buffer()
            frame = bytes(view) if view is not None else None
        inst, ram_mb, load_s = self._load(model_id, opts, frame, ctx.payload)
        sigs = "; ".join(
            f"{'signature ' + s.key if s.key else 'version ' + s.version}: inputs {self._list(s.inputs)} -> "
            f"outputs {self._list(s.outputs)}" for s in inst.signatures.values())
        msg = (f"loaded '{model_id}' from {inst.source} in {load_s * 1000:.0f} ms on {inst.accelerator} "
               f"({inst.options.threads} thread(s)){', stateful' if inst.stateful else ''}; {sigs}")
        if inst.notes:
            msg += "; " + "; ".join(inst.notes)
        return ML.LoadModelResponse(success=True, message=msg, ram_allocated_mb=int(round(ram_mb)),
                                    vram_allocated_mb=0).SerializeToString()

    def unload_model(self, ctx: RequestContext) -> bytes:
        req = ML.UnloadModelRequest.FromString(ctx.payload)
        record = self.models.remove(req.model_id)   # requests no longer find it; the broker is told
        if record is None:
            raise WorkerError("NOT_FOUND", f"model '{req.model_id}' is not loaded in the litert pool")
        record.runtime.close()
        return ML.StatusResponse(success=True, message=f"unloaded '{req.model_id}'").SerializeToString()

    def close(self) -> None:
        for model_id in list(self.models):
            record = self.models.remove(model_id)
            if record is not None:
                record.runtime.close()
