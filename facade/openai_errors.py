"""OpenAI-shaped errors for the HTTP API (facade/openai_http.py): the one gRPC status -> HTTP mapping.

Every error the HTTP port answers is `{"error": {"message", "type", "param", "code"}}` with the HTTP
status below. Worker and broker errors arrive as gRPC status names (facade/errors.py BrokerError), the
same ones a gRPC client sees; this table is the only place they become HTTP statuses.

| gRPC status          | HTTP | OpenAI error type       | when                                              |
|----------------------|------|-------------------------|---------------------------------------------------|
| INVALID_ARGUMENT     | 400  | invalid_request_error   | bad JSON, bad parameter, prompt over a limit      |
| FAILED_PRECONDITION  | 400  | invalid_request_error   | the model cannot do this (e.g. not a chat model)  |
| OUT_OF_RANGE         | 400  | invalid_request_error   | a value outside its range                         |
| UNAUTHENTICATED      | 401  | authentication_error    | missing or wrong API key (the shared token)       |
| PERMISSION_DENIED    | 403  | permission_error        | a path outside the model folders                  |
| NOT_FOUND            | 404  | not_found_error         | unknown model (resolver's NOT_FOUND), unknown URL |
| ALREADY_EXISTS       | 409  | conflict_error          |                                                   |
| ABORTED              | 409  | conflict_error          |                                                   |
| (body too large)     | 413  | invalid_request_error   | request body over --max-message-mb                |
| (answer too large)   | 413  | invalid_request_error   | answer or SSE event over --max-response-mb (code  |
|                      |      |                         | response_too_large; gRPC: RESOURCE_EXHAUSTED)     |
| RESOURCE_EXHAUSTED   | 429  | rate_limit_error        | pool saturated / facade buffer full; Retry-After  |
| CANCELLED            | 499  | cancelled               | (the client went away: nobody reads it)           |
| UNIMPLEMENTED        | 501  | not_implemented_error   |                                                   |
| UNAVAILABLE          | 503  | service_unavailable     | the pool is down or restarting                    |
| DEADLINE_EXCEEDED    | 504  | timeout_error           | the request's deadline passed                     |
| INTERNAL, UNKNOWN, DATA_LOSS, other | 500 | server_error | a bug or a worker crash                        |
"""
from __future__ import annotations

import json
from typing import Optional

from aiohttp import web

# gRPC status name -> (HTTP status, OpenAI error type)
GRPC_TO_HTTP: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "OUT_OF_RANGE": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "conflict_error"),
    "ABORTED": (409, "conflict_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "CANCELLED": (499, "cancelled"),
    "UNIMPLEMENTED": (501, "not_implemented_error"),
    "UNAVAILABLE": (503, "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "timeout_error"),
    "INTERNAL": (500, "server_error"),
    "UNKNOWN": (500, "server_error"),
    "DATA_LOSS": (500, "server_error"),
}
# HTTP status raised by aiohttp itself (no gRPC status behind it) -> OpenAI error type
HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
              405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
              429: "rate_limit_error"}
RETRY_AFTER_S = 1   # Retry-After on 429 and 503


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: `code` is the gRPC status name (or an HTTP-only code)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def from_grpc(code: str, message: str, param: Optional[str] = None) -> OpenAIError:
    status, type_ = GRPC_TO_HTTP.get(code, (500, "server_error"))
    return OpenAIError(status, message, type_, param, code.lower())


def bad_request(message: str, param: Optional[str] = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, "invalid_argument")


def body(err: OpenAIError) -> dict:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def response(err: OpenAIError) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if err.status in (429, 503) else None
    if err.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return web.Response(status=err.status, text=json.dumps(body(err)), content_type="application/json",
                        headers=headers)
