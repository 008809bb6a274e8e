"""pythonml.v1.Pipelines Run and RunStream: the inputs (inline or blob references into the shared-memory
frame) checked, then the model's pipeline module of workers/hf/pipelines/registry.py run on them.

`PipelineHandlers` is a mixin of workers/hf/service.py's HFService.
"""
from __future__ import annotations

import time

from workers.context import RequestContext, WorkerError
from workers.hf.pipelines import registry


class PipelineHandlers:
    """Mixin: Run and RunStream."""

    def _pipeline_inputs(self, ctx: RequestContext, req) -> list:
        out = []
        if len(req.inputs) > self.max_pipeline_inputs:
            raise WorkerError("INVALID_ARGUMENT", f"{len(req.inputs)} inputs in one request; the limit is "
                                                  f"{self.max_pipeline_inputs} (worker option max_pipeline_inputs)")
        for i, inp in enumerate(req.inputs):
            # inline bytes, else the slice of the shared-memory blob its BlobRef names (common/payload.py)
            image = ctx.side.ref(inp, "image", f"inputs[{i}].image")
            audio = ctx.side.ref(inp, "audio", f"inputs[{i}].audio")
            kinds = [k for k, v in (("text", inp.text), ("image", image), ("audio", audio)) if v]
            if len(kinds) != 1:
                raise WorkerError("INVALID_ARGUMENT", f"inputs[{i}]: set exactly one of text, image, audio "
                                                      f"(got {kinds or 'none'})")
            if len(inp.text) > self.max_prompt_chars:
                raise WorkerError("INVALID_ARGUMENT", f"inputs[{i}]: text is {len(inp.text)} characters; the limit "
                                                      f"is {self.max_prompt_chars}")
            out.append(registry.Input(index=i, kind=kinds[0], text=inp.text, data=image if image else audio,
                                      encoding=inp.encoding, sample_rate=inp.sample_rate, role=inp.role))
        return out

    def run_pipeline_stream(self, ctx: RequestContext) -> bytes:
        """Pipelines/RunStream: Run, with generated text sent piece by piece (PipelineResponse.delta) before
        the last message (done, the complete outputs)."""
        return self.run_pipeline(ctx, stream=True)

    def run_pipeline(self, ctx: RequestContext, stream: bool = False) -> bytes:
        from protos import pythonml_pb2 as X
        req = X.PipelineRequest.FromString(ctx.payload)
        if not req.model.strip():
            raise WorkerError("INVALID_ARGUMENT", "Pipelines/Run: model is empty: name a model id or a local path")
        if req.pipeline_type.strip():
            registry.require(req.pipeline_type)
        inputs = self._pipeline_inputs(ctx, req)
        lm = self._acquire(req.model, "run", req.pipeline_type)
        emit = None
        if stream:
            def emit(index: int, text: str) -> None:
                ctx.send_partial(X.PipelineResponse(model=lm.model_id, pipeline_type=lm.entry.name, delta=text,
                                                    output_index=index).SerializeToString())
        call = registry.Call(inputs=inputs, options=dict(req.options), candidate_labels=list(req.candidate_labels),
                             ctx=ctx, max_audio_s=self.max_audio_s, emit=emit)
        t0 = time.perf_counter()
        outputs = registry.module_of(lm.entry).run(lm.handle, call)
        resp = X.PipelineResponse(model=lm.model_id, pipeline_type=lm.entry.name, processing_s=time.perf_counter() - t0,
                                  done=True)
        resp.outputs.extend(outputs)
        return resp.SerializeToString()
