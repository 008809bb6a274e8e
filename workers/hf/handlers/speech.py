"""pythonml.v1.Speech Transcribe and StreamTranscribe (engine: workers/hf/pipelines/speech.py).

`SpeechHandlers` is a mixin of workers/hf/service.py's HFService. Audio comes from the shared-memory frame
when the facade placed it there, else from the request's own bytes field; it is decoded by
common/audio.py and bounded by the worker option max_audio_s.
"""
from __future__ import annotations

import time

from workers.context import RequestContext, WorkerError


class SpeechHandlers:
    """Mixin: Transcribe and StreamTranscribe."""

    @staticmethod
    def _segment_msgs(out, segs) -> None:
        for sg in segs:
            out.add(start_s=round(sg.start, 3), end_s=round(sg.end, 3), text=sg.text.strip(),
                    avg_logprob=sg.avg_logprob, no_speech_prob=sg.no_speech_prob)

    def transcribe(self, ctx: RequestContext) -> bytes:
        from protos import pythonml_pb2 as X
        from common import audio as A
        from workers.hf.pipelines import speech
        req = X.TranscribeRequest.FromString(ctx.payload)
        task = speech.check_task(req.task)
        samples = A.decode(ctx.side.field(req, "audio"), req.encoding, req.sample_rate, req.channels,
                           where="Transcribe: audio",
                           max_seconds=self.max_audio_s)
        opts = dict(req.options)
        lm = self._acquire(req.model or self.default_speech_model, "speech")
        beam = speech.check_beam(req.beam_size or opts.get("beam_size") or 1)
        t0 = time.perf_counter()
        res = lm.handle.transcribe(samples, req.language, task, beam, opts, speech.stopper(ctx))
        resp = X.TranscribeResponse(text=res.text, language=res.language or "",
                                    language_probability=res.language_probability,
                                    duration_s=len(samples) / speech.RATE, processing_s=time.perf_counter() - t0,
                                    model=lm.model_id, backend=lm.handle.backend)
        self._segment_msgs(resp.segments, res.segments)
        return resp.SerializeToString()

    def stream_transcribe(self, ctx: RequestContext) -> bytes:
        from protos import pythonml_pb2 as X
        from common import audio as A
        from workers.hf.pipelines import speech
        chunk = X.AudioChunk.FromString(ctx.payload)
        state = ctx.stream_state if ctx.stream_state is not None else {}
        st = state.get("speech")
        if st is None:
            st = speech.StreamState.start(chunk.model or self.default_speech_model, chunk, 1)
            state["speech"] = st
            state["speech_opts"] = dict(chunk.metadata)
        else:
            st.check_chunk(chunk)
        index = st.chunks
        samples = A.decode(ctx.side.field(chunk, "pcm"), st.encoding, st.sample_rate, st.channels,
                           where=f"StreamTranscribe chunk {index}",
                           allow_empty=True, max_seconds=self.max_audio_s)
        if (st.received + samples.size) / speech.RATE > self.max_audio_s:
            raise WorkerError("INVALID_ARGUMENT", f"StreamTranscribe: the stream passed {self.max_audio_s:.0f} s of "
                                                  "audio (worker option max_audio_s); open a new stream")
        lm = self._acquire(st.model_id, "speech")
        final, finals, partial, dt = speech.stream_step(lm.handle, st, samples, chunk.end, "transcribe",
                                                        state.get("speech_opts") or {}, speech.stopper(ctx))
        up = X.TranscriptUpdate(is_final=final, chunk_index=index, audio_received_s=st.received / speech.RATE,
                                processing_s=dt, language=st.detected_language or st.language)
        if final:
            up.text = " ".join(sg.text.strip() for sg in finals)
            self._segment_msgs(up.segments, finals)
            up.partial_text = " ".join(sg.text.strip() for sg in partial)
        else:
            up.text = " ".join(sg.text.strip() for sg in partial)
            self._segment_msgs(up.segments, partial)
        return up.SerializeToString()
