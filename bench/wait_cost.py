"""What a cross-process wait costs a gRPC handler (issue 16's transport floor), apart from our service.

Servers, one Echo each, measured in interleaved turns by one grpc.aio client (sequential calls):
- `aio`: a bare grpc.aio Echo that answers itself (the baseline, as bench/bare_echo_server.py);
- `aio-hop`: the same, but the handler first sends the payload as a unix datagram to a separate Python
  echo process and awaits its answer (the loop watches the socket, a Future per call);
- `sync-hop`: a sync grpc.server whose handler thread sends the same datagram and blocks in recv.
The echo process answers at once (`x`), after spinning 300 us (`spin`: a busy worker), or after sleeping
300 us (`sleep`). Printed: p50 and p50 minus the bare server's. Not part of run_all (no `run`):
`python -m bench.wait_cost [turns]`; bench/transport_steps.md has its results.
"""
from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import grpc  # noqa: E402

from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG  # noqa: E402

PAYLOADS = {"aio": [b"x"], "aio-hop": [b"x", b"spin", b"sleep"], "sync-hop": [b"x", b"spin", b"sleep"]}
CALLS = 500


def echo_process(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    while True:
        data, addr = s.recvfrom(65536)
        if data == b"spin":
            t = time.perf_counter()
            while time.perf_counter() - t < 0.0003:
                pass
        elif data == b"sleep":
            time.sleep(0.0003)
        s.sendto(data, addr)


def aio_server(mode: str, port: int, folder: str) -> None:
    echo = f"{folder}/echo.dgram"

    class Echo(XG.DiagnosticsServicer):
        def __init__(self, sock):
            self.sock, self.waiters = sock, []

        async def Echo(self, request, context):
            if mode == "aio-hop":
                fut = asyncio.get_running_loop().create_future()
                self.waiters.append(fut)
                self.sock.sendto(request.payload, echo)
                await fut
            yield X.EchoReply(payload=request.payload, pid=os.getpid())

    async def main():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(f"{folder}/aio-{port}.dgram")
        sock.setblocking(False)
        svc = Echo(sock)

        def readable():
            while True:
                try:
                    sock.recv(65536)
                except BlockingIOError:
                    return
                svc.waiters.pop(0).set_result(None)
        asyncio.get_running_loop().add_reader(sock.fileno(), readable)
        server = grpc.aio.server()
        XG.add_DiagnosticsServicer_to_server(svc, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("READY", flush=True)
        await server.wait_for_termination()
    try:
        import uvloop   # as the facade runs
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())


def sync_server(port: int, folder: str) -> None:
    echo, tls = f"{folder}/echo.dgram", threading.local()

    class Echo(XG.DiagnosticsServicer):
        def Echo(self, request, context):
            sock = getattr(tls, "sock", None)
            if sock is None:
                sock = tls.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(f"{folder}/sync-{threading.get_ident()}.dgram")
            sock.sendto(request.payload, echo)
            sock.recv(65536)
            yield X.EchoReply(payload=request.payload, pid=os.getpid())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    XG.add_DiagnosticsServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


async def latencies(port: int, payload: bytes) -> list:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub, out = XG.DiagnosticsStub(ch), []
        req = X.EchoRequest(pool="x", payload=payload)
        for i in range(CALLS + 100):
            t = time.perf_counter()
            async for _ in stub.Echo(req):
                pass
            if i >= 100:
                out.append(time.perf_counter() - t)
        return out


def main(turns: int) -> None:
    from tests.service import free_port
    folder = tempfile.mkdtemp(prefix="pml-wait-")
    me = [sys.executable, os.path.abspath(__file__)]
    procs = [subprocess.Popen(me + ["echo", f"{folder}/echo.dgram"])]
    ports = {}
    try:
        for mode in PAYLOADS:
            ports[mode] = free_port()
            p = subprocess.Popen(me + [mode, str(ports[mode]), folder], stdout=subprocess.PIPE)
            procs.append(p)
            p.stdout.readline()
        res: dict = {(m, p): [] for m in PAYLOADS for p in PAYLOADS[m]}
        for _ in range(turns):
            for mode, pays in PAYLOADS.items():
                for pay in pays:
                    res[(mode, pay)] += asyncio.run(latencies(ports[mode], pay))
        base = statistics.median(res[("aio", b"x")])
        for (mode, pay), lat in res.items():
            p50 = statistics.median(lat)
            print(f"{mode:9s} {pay.decode():6s} p50 {p50 * 1e6:6.0f} us   minus bare {(p50 - base) * 1e6:5.0f} us")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo"]:
        echo_process(sys.argv[2])
    elif sys.argv[1:2] == ["sync-hop"]:
        sync_server(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:2] in (["aio"], ["aio-hop"]):
        aio_server(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
