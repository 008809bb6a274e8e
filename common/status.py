"""The error every layer raises for a precise gRPC status: a status code name and a message a person can act on.

Workers know it as ``workers.context.WorkerError`` (the same class); the facade maps ``code`` 1:1 to a
gRPC status. It lives here so that modules shared by the facade and the workers (the model access
policy, the request option allow-list) raise the same error without importing a worker module.
"""
from __future__ import annotations


class StatusError(Exception):
    """An error with a precise gRPC status code name (e.g. "INVALID_ARGUMENT") and a message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ModelUnloaded(StatusError):
    """The model a request waited for was unloaded meanwhile: UNAVAILABLE (a retry loads it again)."""

    def __init__(self, model_id: str):
        super().__init__("UNAVAILABLE", f"model '{model_id}' was unloaded while this request waited; retry")
        self.model_id = model_id
