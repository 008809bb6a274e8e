"""OpenAI-compatible HTTP API on `--http-port` (off by default), in the facade's own event loop.

aiohttp, chosen over FastAPI/Starlette + uvicorn: it is one dependency with its own C-accelerated HTTP
parser, adds no per-request validation/DI layer, and runs as one more server in the asyncio loop that
already runs grpc.aio and owns the BrokerClient, so every HTTP request goes through the same DEALER
socket, shared-memory slots, byte budget and caller fairness to the same workers as gRPC. The same app also
runs in a process of its own on the broker frontend (bench/openai_own_process.py); bench/bench_openai.py
measures both ways: in-loop is the faster and steadier HTTP front (kept); the own process lowers gRPC's p99
under saturating HTTP load by 1-3 ms (its verdict has the numbers). Nothing here blocks the loop: JSON work
over OFFLOAD_BYTES runs in a thread. Each endpoint builds the same protobuf request a gRPC client would send:

| endpoint                      | broker method                              |
|-------------------------------|--------------------------------------------|
| GET  /v1/models               | broker model query + the resolver's built-ins |
| POST /v1/chat/completions     | ml.TransformersService/ChatCompletion (stream) |
| POST /v1/completions          | ml.TransformersService/GenerateText (stream) |
| POST /v1/embeddings           | ml.TransformersService/GenerateEmbeddings  |
| POST /v1/audio/transcriptions | pythonml.v1.Speech/Transcribe              |

Notes: `stop` is applied here (the workers have no stop strings): the text is cut at the first stop
string, the worker stream is cancelled (CANCEL, as on a gRPC cancel) and finish_reason is "stop";
while streaming, the last len(longest stop)-1 characters are held back until they cannot start one.
`seed` is accepted only with temperature 0 (greedy decoding is deterministic already); a seed with
sampling is refused (400, param "seed"): the workers take no seed. Only n=1. usage.completion_tokens is the
worker's tokens_generated (TextResponse / ChatResponse); usage.prompt_tokens is the worker's prompt_tokens
(TextResponse, ChatResponse, GeneratedEmbeddingsResponse): the tokens the model read, counted by the hf
worker (LiteRT-LM models report 0; the facade loads no tokenizer). /v1/completions goes through GenerateText, which renders
the prompt with the model's chat template when it has one (as on gRPC). A deadline, as gRPC's: request header
`X-Request-Timeout: <seconds>` (else none); past it the worker stops and the answer is 504.
Answers are capped like gRPC's (--max-response-mb, facade/response_limit.py): a JSON body over the limit is
413 with the gRPC refusal text; an SSE event over it ends the stream with that error event (or is 413 when
it is the first). Streamed chunks are rendered from a per-request template (only the text is JSON-encoded
per token). A client that disconnects cancels its handler (handler_cancellation=True), which cancels the broker
call: the worker stops within one generation step. The shared token, when set, is the API key.
Errors: facade/openai_errors.py.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import json
import logging
import time
import uuid
from contextlib import aclosing
from typing import Optional

import numpy as np
from aiohttp import web

from common.model_resolver import BUILTINS
from facade.broker_client import BrokerClient
from facade.budget import ByteBudget
from facade.caller import CALLER
from facade.errors import BrokerError
from facade.openai_errors import OpenAIError, bad_request, from_grpc, response
from facade.response_limit import DEFAULT_MAX_RESPONSE_MB, refusal
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X

log = logging.getLogger("facade.http")

TF = "ml.TransformersService"
CHAT, TEXT, EMBED = f"{TF}/ChatCompletion", f"{TF}/GenerateText", f"{TF}/GenerateEmbeddings"
TRANSCRIBE = "pythonml.v1.Speech/Transcribe"
MAX_STOP = 4                 # OpenAI's limit on stop strings
MAX_STOP_CHARS = 256
WHISPER_ALIASES = ("whisper-1",)   # OpenAI's name: the worker's default speech model
OPEN_PATHS = ("/health",)
# JSON work on more bytes than this (a request body to parse, an embeddings answer to write) runs in a worker
# thread, so that the gRPC calls sharing this event loop are not held up by one big HTTP request
OFFLOAD_BYTES = 64 * 1024


def _timeout(request) -> Optional[float]:
    raw = request.headers.get("X-Request-Timeout")
    if raw is None:
        return None
    try:
        t = float(raw)
    except ValueError:
        t = -1.0
    if not 0 < t < 1e7:
        raise bad_request(f"header X-Request-Timeout must be a positive number of seconds, got {raw[:40]!r}")
    return t


def _display_name(repo: str) -> str:
    return repo.split("/")[-1]


# ---- request parsing ------------------------------------------------------------------------------
def _num(body: dict, key: str, kind, lo=None, hi=None, default=None):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise bad_request(f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {v!r:.40}", key)
    v = kind(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad_request(f"'{key}' must be within [{lo}, {hi}], got {v}", key)
    return v


def _sampling(body: dict) -> dict:
    """temperature, top_p, max new tokens, stop strings; n and seed checked."""
    temperature = _num(body, "temperature", float, 0.0, 2.0, 1.0)
    top_p = _num(body, "top_p", float, 0.0, 1.0, 0.0)
    max_tokens = _num(body, "max_completion_tokens", int, 1, None) or _num(body, "max_tokens", int, 1, None) or 0
    n = _num(body, "n", int, 1, None, 1)
    if n != 1:
        raise bad_request("only n=1 is supported", "n")
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad_request("'seed' must be an integer", "seed")
        if temperature > 0:
            raise bad_request("'seed' is supported only with temperature 0 (greedy decoding, deterministic): "
                              "the workers take no sampling seed", "seed")
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise bad_request(f"'stop': at most {MAX_STOP} strings of {MAX_STOP_CHARS} characters", "stop")
    return {"temperature": temperature, "top_p": top_p, "max_length": max_tokens,
            "stops": [s for s in stops if s]}


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' is required (a string naming the model)", "model")
    return model


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    return stream, bool(opts.get("include_usage")) and stream


class StopCutter:
    """Cuts a text stream at the first stop string; holds back what could still start one."""

    def __init__(self, stops: list):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buf = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.buf += text
        cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buf, self.stopped = self.buf[:cut], "", True
            return out
        keep = len(self.buf) - self.hold
        if keep <= 0:
            return ""
        out, self.buf = self.buf[:keep], self.buf[keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=16)
def _floats_format(n: int) -> str:
    return "[" + ",".join(["%.9g"] * n) + "]"


def _float_array(values) -> bytes:
    """A JSON array of float32 values with 9 significant digits, which gives back exactly each float32;
    about 3x faster than json.dumps of the Python floats (their 17-digit reprs) and ~40% fewer bytes."""
    v = tuple(values)
    out = _floats_format(len(v)) % v
    if "n" in out:   # nan / inf: json.dumps's spelling (NaN, Infinity), as before
        return _dumps(list(v))
    return out.encode()


def _sse(obj) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


class ChunkTemplate:
    """The SSE event of one text chunk, rendered once per request: per token only the text is JSON-encoded."""
    MARK = "\x01text\x01"

    def __init__(self, chunk_dict: dict):
        head, tail = _sse(chunk_dict).rsplit(json.dumps(self.MARK).encode(), 1)
        self.head, self.tail = head, tail

    def event(self, text: str) -> bytes:
        return self.head + json.dumps(text).encode() + self.tail


class TooLarge(OpenAIError):
    """An answer (or stream event) above --max-response-mb: 413 with the gRPC refusal text."""

    def __init__(self, method: str, nbytes: int, limit: int, index: Optional[int] = None):
        super().__init__(413, refusal(method, nbytes, limit, index=index), "invalid_request_error", None,
                         "response_too_large")


def _embeddings_body(raw: bytes, fmt: str, model: str) -> bytes:
    """The /v1/embeddings JSON answer of a GeneratedEmbeddingsResponse, assembled as bytes."""
    out = ML.GeneratedEmbeddingsResponse.FromString(raw)
    data = []
    for i, e in enumerate(out.embeddings):
        vec = (b'"' + base64.b64encode(np.asarray(e.values, dtype="<f4").tobytes()) + b'"' if fmt == "base64"
               else _float_array(e.values))
        data.append(b'{"object":"embedding","index":%d,"embedding":%s}' % (i, vec))
    usage = {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens}
    return (b'{"object":"list","data":[' + b",".join(data) + b'],"model":' + _dumps(model) + b',"usage":'
            + _dumps(usage) + b"}")


# ---- the app --------------------------------------------------------------------------------------
class OpenAIHTTP:
    def __init__(self, client: BrokerClient, budget: ByteBudget, token: str = "", max_body_bytes: int = 64 * 2**20,
                 max_response_bytes: int = int(DEFAULT_MAX_RESPONSE_MB * 2**20)):
        self.client = client
        self.budget = budget
        self.token = token.encode() if token else b""
        self.max_body = max_body_bytes
        self.max_response = int(max_response_bytes)
        self.runner: Optional[web.AppRunner] = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors])
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model:.+}", self.model)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_get("/health", self.health)
        return app

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        self.runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_port=False, ssl_context=ssl_context)
        await site.start()
        sock = site._server.sockets[0] if site._server and site._server.sockets else None
        return sock.getsockname()[1] if sock else port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # ---- middleware: auth, size, caller, error shape -------------------------------------------------
    def _check_key(self, request: web.Request) -> None:
        if not self.token or request.path in OPEN_PATHS:
            return
        auth = request.headers.get("Authorization", "")
        presented = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if presented is None:
            raise OpenAIError(401, "missing API key: send 'Authorization: Bearer <token>'",
                              "authentication_error", None, "invalid_api_key")
        if not hmac.compare_digest(presented.encode(), self.token):
            raise OpenAIError(401, "invalid API key", "authentication_error", None, "invalid_api_key")

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            self._check_key(request)
            if request.content_length is not None and request.content_length > self.max_body:
                raise OpenAIError(413, f"request body of {request.content_length} bytes is above the limit of "
                                  f"{self.max_body} bytes (--max-message-mb)", "invalid_request_error", None,
                                  "request_too_large")
            peer = request.transport.get_extra_info("peername") if request.transport else None
            CALLER.set(f"http:{peer[0]}:{peer[1]}" if peer else "http")
            request["timeout"] = _timeout(request)
            return await handler(request)
        except OpenAIError as err:
            return response(err)
        except BrokerError as exc:
            return response(from_grpc(exc.code, exc.message))
        except web.HTTPRequestEntityTooLarge:
            return response(OpenAIError(413, f"request body is above the limit of {self.max_body} bytes "
                                        f"(--max-message-mb)", "invalid_request_error", None, "request_too_large"))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            from facade.openai_errors import HTTP_TYPES
            return response(OpenAIError(exc.status, exc.reason if exc.status != 404 else f"no route {request.path}",
                                        HTTP_TYPES.get(exc.status, "invalid_request_error"), None,
                                        "not_found" if exc.status == 404 else None))

    def _reply(self, obj, method: str, raw: Optional[bytes] = None) -> web.Response:
        """A JSON answer (`obj`, or `raw` already encoded), refused (413, the gRPC refusal text) when it is above
        --max-response-mb."""
        raw = _dumps(obj) if raw is None else raw
        if len(raw) > self.max_response:
            raise TooLarge(method, len(raw), self.max_response)
        return web.Response(body=raw, content_type="application/json")

    def _event(self, raw: bytes, method: str, index: int) -> bytes:
        if len(raw) > self.max_response:
            raise TooLarge(method, len(raw), self.max_response, index)
        return raw

    async def _json(self, request: web.Request) -> dict:
        raw = await request.read()
        try:
            body = json.loads(raw) if len(raw) < OFFLOAD_BYTES else await asyncio.to_thread(json.loads, raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        return body

    async def _call(self, request, method: str, msg, model: str, nbytes: int, frame=None) -> bytes:
        if not self.budget.admit(nbytes):
            raise OpenAIError(429, self.budget.refusal(method, nbytes), "rate_limit_error", None, "resource_exhausted")
        try:
            return await self.client.unary(method, "hf", msg.SerializeToString(), model=model, frame=frame,
                                           timeout=request["timeout"])
        finally:
            self.budget.release(nbytes)

    # ---- endpoints -----------------------------------------------------------------------------------
    async def health(self, request):
        return web.json_response({"status": "ok"})

    async def _model_list(self) -> list:
        try:
            loaded = (await self.client.query("models")).get("models") or []
        except BrokerError:
            loaded = []
        loaded_ids = {str(m.get("model_id", "")).lower(): m for m in loaded}
        out, seen = [], set()
        for b in BUILTINS:
            names = {b.repo.lower(), *b.aliases}
            hit = next((loaded_ids[n] for n in names if n in loaded_ids), None)
            seen |= names
            out.append({"id": _display_name(b.repo), "object": "model", "created": 0, "owned_by": b.repo.split("/")[0],
                        "loaded": hit is not None, "root": b.repo, "description": b.what})
        for mid, m in loaded_ids.items():
            if mid not in seen:
                out.append({"id": str(m.get("model_id")), "object": "model", "created": int(m.get("loaded_at") or 0),
                            "owned_by": "local", "loaded": True, "pipeline_type": str(m.get("pipeline_type", ""))})
        return out

    async def models(self, request):
        return self._reply({"object": "list", "data": await self._model_list()}, "GET /v1/models")

    async def model(self, request):
        name = request.match_info["model"].lower()
        for m in await self._model_list():
            if m["id"].lower() == name or str(m.get("root", "")).lower() == name:
                return self._reply(m, "GET /v1/models")
        raise OpenAIError(404, f"model {request.match_info['model']!r:.200} not found", "not_found_error", "model",
                          "model_not_found")

    async def _generation_request(self, request) -> tuple:
        """What chat and completions read alike: (body, model, sampling, stream, include_usage)."""
        body = await self._json(request)
        return (body, _model(body), _sampling(body), *_stream_flags(body))

    async def chat(self, request):
        body, model, s, stream, include_usage = await self._generation_request(request)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise bad_request("'messages' must be a non-empty list", "messages")
        req = ML.ChatRequest(model=model, temperature=s["temperature"], top_p=s["top_p"], max_length=s["max_length"])
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise bad_request(f"messages[{i}] must be an object with a 'role'", "messages")
            content = m.get("content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise bad_request(f"messages[{i}].content: only text parts are supported", "messages")
                content = "".join(str(p.get("text", "")) for p in content)
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise bad_request(f"messages[{i}].content must be a string", "messages")
            req.messages.add(role=m["role"], content=content)
        return await self._generate(request, CHAT, req, model, s["stops"], stream, include_usage, chat=True,
                                    nbytes=request.content_length or len(req.SerializeToString()))

    async def completions(self, request):
        body, model, s, stream, include_usage = await self._generation_request(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise bad_request("'prompt' must be a string (one prompt per request)", "prompt")
        for key in ("echo", "logprobs", "best_of", "suffix"):
            if body.get(key) not in (None, False, 1) and not (key == "best_of" and body.get(key) == 1):
                raise bad_request(f"'{key}' is not supported", key)
        req = ML.TextRequest(prompt=prompt, model=model, temperature=s["temperature"], top_p=s["top_p"],
                             max_length=s["max_length"])
        return await self._generate(request, TEXT, req, model, s["stops"], stream, include_usage, chat=False,
                                    nbytes=request.content_length or len(req.SerializeToString()))

    async def _generate(self, request, method, req, model, stops, stream, include_usage, chat, nbytes):
        if not self.budget.admit(nbytes):
            raise OpenAIError(429, self.budget.refusal(method, nbytes), "rate_limit_error", None, "resource_exhausted")
        try:
            return await self._generate_admitted(request, method, req, model, stops, stream, include_usage, chat)
        finally:
            self.budget.release(nbytes)

    async def _generate_admitted(self, request, method, req, model, stops, stream, include_usage, chat):
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        reply_cls = ML.ChatResponse if chat else ML.TextResponse
        cutter = StopCutter(stops)
        state = {"tokens": 0, "prompt": 0, "finish": None}

        def chunk(text: Optional[str], finish: Optional[str], first: bool = False) -> dict:
            if chat:
                delta = {}
                if first:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            out = {"id": rid, "object": kind + (".chunk" if chat else ""), "created": created, "model": model,
                   "choices": [choice]}
            if include_usage:
                out["usage"] = None
            return out

        def usage() -> dict:
            n, p = state["tokens"], state["prompt"]
            return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}

        async def pieces():
            """Text pieces after the stop cut; sets state['finish']."""
            async with aclosing(self.client.stream(method, "hf", req.SerializeToString(), model=model,
                                                        timeout=request["timeout"])) as parts:
                async for raw in parts:
                    r = reply_cls.FromString(raw)
                    text = r.content if chat else r.text
                    state["tokens"] = max(state["tokens"], r.tokens_generated)
                    state["prompt"] = max(state["prompt"], r.prompt_tokens)
                    out = cutter.feed(text)
                    if cutter.stopped:
                        state["finish"] = "stop"
                        if out:
                            yield out
                        return   # aclosing() cancels the worker's generation
                    if r.done:
                        state["finish"] = (r.finish_reason if chat else "") or "stop"
                        if not chat and state["tokens"] and req.max_length and state["tokens"] >= req.max_length:
                            state["finish"] = "length"
                    if out:
                        yield out
            rest = cutter.flush()
            if rest:
                yield rest
            state["finish"] = state["finish"] or "stop"

        if not stream:
            text = "".join([p async for p in pieces()])
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                       "finish_reason": state["finish"]} if chat else
                      {"index": 0, "text": text, "logprobs": None, "finish_reason": state["finish"]})
            return self._reply({"id": rid, "object": kind, "created": created, "model": model,
                                "choices": [choice], "usage": usage()}, method)

        # streamed: open the SSE response only after the first piece, so that an error before any output
        # (unknown model, bad parameter, pool down, first event too large) still gets its HTTP status
        resp: Optional[web.StreamResponse] = None
        template = ChunkTemplate(chunk(ChunkTemplate.MARK, None))
        index = 0
        gen = pieces()
        try:
            async with aclosing(gen):
                async for text in gen:
                    event = self._event(_sse(chunk(text, None, True)) if index == 0 and chat
                                        else template.event(text), method, index)
                    if resp is None:
                        resp = await self._open_sse(request)
                    await resp.write(event)
                    index += 1
                if resp is None:
                    resp = await self._open_sse(request)
                    if chat:
                        await resp.write(_sse(chunk(None, None, True)))
        except (BrokerError, OpenAIError) as exc:
            if resp is None:
                raise
            err = from_grpc(exc.code, exc.message) if isinstance(exc, BrokerError) else exc
            await resp.write(_sse({"error": {"message": err.message, "type": err.type, "param": None,
                                             "code": err.code}}))
            await resp.write(b"data: [DONE]\n\n")
            return resp
        tail = [_sse(chunk(None if chat else "", state["finish"]))]
        if include_usage:
            tail.append(_sse({"id": rid, "object": kind + (".chunk" if chat else ""), "created": created,
                              "model": model, "choices": [], "usage": usage()}))
        tail.append(b"data: [DONE]\n\n")
        await resp.write(b"".join(tail))
        await resp.write_eof()
        return resp

    async def _open_sse(self, request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        return resp

    async def embeddings(self, request):
        body = await self._json(request)
        model = _model(body)
        inp = body.get("input")
        if isinstance(inp, str):
            texts = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(t, str) for t in inp):
            texts = inp
        else:
            raise bad_request("'input' must be a string or a non-empty list of strings (token arrays are not "
                              "supported)", "input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise bad_request("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        if body.get("dimensions") is not None:
            raise bad_request("'dimensions' is not supported", "dimensions")
        req = ML.GenerateEmbeddingsRequest(texts=texts, model=model)
        raw = await self._call(request, EMBED, req, model, request.content_length or len(req.SerializeToString()))
        if len(raw) < OFFLOAD_BYTES:
            body = _embeddings_body(raw, fmt, model)
        else:   # e.g. 256 texts of a 1024-dimension model: ~50 ms of formatting, off the gRPC loop
            body = await asyncio.to_thread(_embeddings_body, raw, fmt, model)
        return self._reply(None, EMBED, body)

    async def transcriptions(self, request):
        if not request.content_type.startswith("multipart/"):
            raise bad_request("send multipart/form-data with a 'file' part", "file")
        form = await request.post()
        f = form.get("file")
        if f is None or not hasattr(f, "file"):
            raise bad_request("'file' (the audio file, WAV) is required", "file")
        audio = f.file.read()
        model = str(form.get("model") or "")
        fmt = str(form.get("response_format") or "json")
        if fmt not in ("json", "text", "verbose_json"):
            raise bad_request("'response_format' must be json, text or verbose_json", "response_format")
        req = X.TranscribeRequest(model="" if model.lower() in WHISPER_ALIASES else model,
                                  language=str(form.get("language") or ""))
        if form.get("prompt"):
            req.options["initial_prompt"] = str(form.get("prompt"))
        if form.get("temperature") not in (None, ""):
            req.options["temperature"] = str(form.get("temperature"))
        raw = await self._call(request, TRANSCRIBE, req, req.model, len(audio), frame=audio)
        out = X.TranscribeResponse.FromString(raw)
        if fmt == "text":
            text = out.text.encode()
            if len(text) > self.max_response:
                raise TooLarge(TRANSCRIBE, len(text), self.max_response)
            return web.Response(body=text, content_type="text/plain", charset="utf-8")
        if fmt == "json":
            return self._reply({"text": out.text}, TRANSCRIBE)
        return self._reply({
            "task": "transcribe", "language": out.language, "duration": out.duration_s, "text": out.text,
            "segments": [{"id": i, "start": s.start_s, "end": s.end_s, "text": s.text, "avg_logprob": s.avg_logprob,
                          "no_speech_prob": s.no_speech_prob} for i, s in enumerate(out.segments)]}, TRANSCRIBE)
