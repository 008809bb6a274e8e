"""The OpenAI-compatible HTTP app (facade/openai_http.py) in a process of its own, for bench/bench_openai.py.

The service runs that app in the facade's event loop (`--http-port`). To measure the other way issue #19
asks about, this harness runs the same `OpenAIHTTP` app in a separate process attached to a running
service's broker frontend, the socket the facade uses: its own DEALER (identity `facade-<pid>`) is one
more entry in the broker's set of facades, so requests reach the same workers by the same one hop
(HTTP process -> broker -> worker) as the facade's. What differs from the in-loop variant: its own event
loop and CPU time (HTTP parsing and JSON never run in the gRPC loop), its own byte budget, and no
shared-memory allocator (the slot pool belongs to the facade process; an audio upload travels inline in
the ZeroMQ message, as for remote workers). It sends HELLO without a port, which the broker answers with
POOLS and run.py ignores (no READY line).

    python bench/openai_own_process.py --broker ipc://.../frontend.sock --http-port 8080
    frontend_of(grpc_port) -> the broker frontend address of the facade serving that gRPC port (from /proc)

It prints `READY <port>` on stdout once it listens, and stops on SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _facade(grpc_port: int) -> tuple[int, list]:
    """(pid, argv) of the facade process listening on `grpc_port` (same user, from /proc)."""
    want = f"--port\0{grpc_port}\0".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        if b"facade.server" in argv and want in argv:
            return int(pid), [a.decode() for a in argv.split(b"\0")]
    raise LookupError(f"no facade process serves gRPC port {grpc_port}")


def frontend_of(grpc_port: int) -> str:
    """The `--broker` argument the facade serving `grpc_port` was given by run.py."""
    argv = _facade(grpc_port)[1]
    return argv[argv.index("--broker") + 1]


def facade_pid(grpc_port: int) -> int:
    """The facade's pid (the bench reads its CPU time)."""
    return _facade(grpc_port)[0]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="the OpenAI-compatible HTTP API in its own process (bench harness)")
    ap.add_argument("--broker", required=True, help="the broker frontend address the facade uses")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--http-port", type=int, default=0, help="0: any free port (printed on the READY line)")
    ap.add_argument("--token-env", default="PYTHONML_TOKEN")
    ap.add_argument("--max-message-mb", type=int, default=64)
    ap.add_argument("--max-response-mb", type=float, default=4.0)
    ap.add_argument("--buffer-mb", type=int, default=256)
    return ap.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    from facade.broker_client import BrokerClient
    from facade.budget import ByteBudget
    from facade.openai_http import OpenAIHTTP
    max_bytes = args.max_message_mb * 2**20
    client = BrokerClient(args.broker, None, max_message_bytes=max_bytes + 16 * 2**20)
    token = os.environ.get(args.token_env, "") if args.token_env else ""
    http = OpenAIHTTP(client, ByteBudget(args.buffer_mb * 2**20), token, max_bytes,
                      int(args.max_response_mb * 2**20))
    try:
        port = await http.start(args.host, args.http_port)
    except OSError as exc:
        sys.stderr.write(f"cannot listen for HTTP on {args.host}:{args.http_port}: {exc}\n")
        return 2
    await client.start({"pid": os.getpid(), "role": "openai-http"})
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await http.stop()
    return 0


def main(argv=None) -> int:
    return asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
