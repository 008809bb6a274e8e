"""ml.TransformersService GenerateText and ChatCompletion: bounded, streamed piece by piece, cancellable.

`TextHandlers` is a mixin of workers/hf/service.py's HFService. A causal LM streams through
workers/hf/generation.py, a LiteRT-LM bundle through workers/hf/pipelines/litert_lm.py; both wait for one
of the worker's generation slots (option gen_concurrency) and stop within one token of a cancel or deadline.
"""
from __future__ import annotations

from typing import Optional

from protos import ml_inference_pb2 as ML
from workers.context import RequestContext, WorkerError
from workers.hf import chat as chatmod
from workers.hf import limits
from workers.hf.cancel import CancelToken, raise_for
from workers.hf.handlers.models import LoadedModel


class TextHandlers:
    """Mixin: GenerateText and ChatCompletion."""

    def _check_prompt(self, prompt: str, what: str = "prompt") -> None:
        if not prompt or not prompt.strip():
            raise WorkerError("INVALID_ARGUMENT", f"{what} is empty: send the text to continue")
        limits.check_chars(len(prompt), self.max_prompt_chars, what, "max_prompt_chars",
                           "shorten it or summarise earlier turns")

    def _prompt_ids(self, lm: LoadedModel, messages: list[dict], raw_text: Optional[str] = None) -> list[int]:
        """Render (chat template unless raw) and tokenise, tokenising a bounded prefix first when the text
        is far longer than the model's context (generation.encode_within_context)."""
        from workers.hf.generation import context_limit, encode_within_context
        tok = lm.tokenizer
        with lm.tok_lock:
            if raw_text is not None:
                text, templated = raw_text, False
            else:
                text, templated = chatmod.render(tok, messages), chatmod.has_template(tok)
            return encode_within_context(lambda t: chatmod.encode(tok, t, templated), text, context_limit(lm.model))

    def _in_generation_slot(self, ctx: RequestContext, run):
        """Pieces of `run(should_stop)` once a generation slot is free (waiting stays cancellable)."""
        should_stop = CancelToken.of(ctx).reason
        while not self.gen_slots.acquire(timeout=0.05):
            reason = should_stop()
            if reason:
                yield from ()
                raise_for(reason, ctx)
        try:
            yield from run(should_stop)
        finally:
            self.gen_slots.release()

    def _stream(self, ctx: RequestContext, lm: LoadedModel, prompt_ids: list[int], params):
        from workers.hf.generation import stream_generate
        return self._in_generation_slot(ctx, lambda should_stop: stream_generate(
            lm.model, lm.tokenizer, prompt_ids, params, should_stop, self.device))

    def _litert_stream(self, ctx: RequestContext, lm: LoadedModel, messages: list[dict], raw_text: Optional[str],
                       params):
        """_stream for a LiteRT-LM engine: the same generation slots and cancel checks."""
        from workers.hf.pipelines import litert_lm
        return self._in_generation_slot(ctx, lambda should_stop: litert_lm.stream(
            lm.handle, messages, raw_text, params.max_new_tokens, params.temperature, params.top_p, params.top_k,
            should_stop))

    def generate_text(self, ctx: RequestContext) -> bytes:
        from workers.hf.generation import validate_params
        limits.check_payload(ctx.payload, limits.max_request_bytes(self.max_prompt_chars), "GenerateText",
                             f"prompt of {self.max_prompt_chars} characters")
        req = ML.TextRequest.FromString(ctx.payload)
        self._check_prompt(req.prompt)
        params = validate_params(req.max_length, req.temperature, req.top_p, self.default_max_new, req.top_k)
        lm = self._acquire(req.model or self.default_gen_model, "generate")
        turn = [{"role": "user", "content": req.prompt}]
        prompt_tokens = 0   # reported when known: LiteRT-LM's engine does not say how many it read
        if self._is_litert_lm(lm):
            pieces = self._litert_stream(ctx, lm, turn, req.prompt if lm.raw_prompt else None, params)
        else:
            raw = lm.raw_prompt or not chatmod.has_template(lm.tokenizer)
            prompt_ids = self._prompt_ids(lm, turn, req.prompt if raw else None)
            prompt_tokens = len(prompt_ids)
            pieces = self._stream(ctx, lm, prompt_ids, params)
        n = 0
        for piece in pieces:
            n = piece.tokens
            if piece.finish_reason is None:
                ctx.send_partial(ML.TextResponse(text=piece.text, tokens_generated=n,
                                                 prompt_tokens=prompt_tokens).SerializeToString())
                continue
            if piece.finish_reason in ("cancelled", "deadline"):
                raise_for(piece.finish_reason, ctx, n)
            return ML.TextResponse(text=piece.text, done=True, tokens_generated=n,
                                   prompt_tokens=prompt_tokens).SerializeToString()
        return ML.TextResponse(done=True, tokens_generated=n, prompt_tokens=prompt_tokens).SerializeToString()

    def _check_chat(self, payload: bytes) -> "ML.ChatRequest":
        """Bounds first: request bytes, then message count, then total characters; then the messages."""
        limits.check_payload(payload, limits.max_request_bytes(self.chat_max_chars, self.chat_max_messages),
                             "ChatCompletion", f"{self.chat_max_messages} messages, {self.chat_max_chars} characters")
        req = ML.ChatRequest.FromString(payload)
        limits.check_count(len(req.messages), self.chat_max_messages, "ChatCompletion: messages", "chat_max_messages",
                           "keep the most recent turns or summarise the earlier ones")
        limits.check_chars(sum(len(m.content) for m in req.messages), self.chat_max_chars,
                           "ChatCompletion: the messages together", "chat_max_chars",
                           "keep the most recent turns or summarise the earlier ones")
        return req

    def chat_completion(self, ctx: RequestContext) -> bytes:
        from workers.hf.generation import validate_params
        req = self._check_chat(ctx.payload)
        messages = chatmod.validate_messages(req.messages, self.chat_max_chars)
        params = validate_params(req.max_length, req.temperature, req.top_p, self.chat_max_new, req.top_k)
        lm = self._acquire(req.model or self.default_gen_model, "generate")
        prompt_tokens = 0   # reported when known: LiteRT-LM's engine does not say how many it read
        if self._is_litert_lm(lm):
            pieces = self._litert_stream(ctx, lm, messages, None, params)
        else:
            prompt_ids = self._prompt_ids(lm, messages)
            prompt_tokens = len(prompt_ids)
            pieces = self._stream(ctx, lm, prompt_ids, params)
        for piece in pieces:
            if piece.finish_reason is None:
                ctx.send_partial(ML.ChatResponse(content=piece.text, tokens_generated=piece.tokens,
                                                 prompt_tokens=prompt_tokens).SerializeToString())
                continue
            if piece.finish_reason in ("cancelled", "deadline"):
                raise_for(piece.finish_reason, ctx, piece.tokens)
            return ML.ChatResponse(content=piece.text, done=True, finish_reason=piece.finish_reason,
                                   tokens_generated=piece.tokens, prompt_tokens=prompt_tokens).SerializeToString()
        return ML.ChatResponse(done=True, finish_reason="stop", prompt_tokens=prompt_tokens).SerializeToString()
