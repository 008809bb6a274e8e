"""Errors crossing from the broker into the facade, mapped 1:1 onto gRPC status codes."""
from __future__ import annotations

import grpc


class BrokerError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> grpc.StatusCode:
        return status_code(self.code)


def status_code(name: str) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[name]
    except KeyError:
        return grpc.StatusCode.INTERNAL
