"""Baseline for bench_core: a bare grpc.aio server implementing the same Echo method in-process."""
from __future__ import annotations

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402

from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG  # noqa: E402


class Echo(XG.DiagnosticsServicer):
    async def Echo(self, request, context):
        yield X.EchoReply(payload=request.payload, pid=os.getpid())


async def main(port: int) -> None:
    server = grpc.aio.server()
    XG.add_DiagnosticsServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
