"""The no-op round trip taken apart, hop by hop (issue 16's transport floor): one client, sequential calls,
every side measured in turns (TURNS each, pooled) so that a burst of load on a shared machine hits all.

Rows: bare grpc.aio Echo (bench/bare_echo_server.py); one ZeroMQ round trip to a Python echo process (the
price of any hop); broker + fake worker reached by a raw DEALER on the broker frontend, replies through
the broker; the same with the worker's direct reply to a PULL socket of ours in the run folder (what the
facade does, docs/ARCHITECTURE.md "Direct replies"); the whole path (gRPC -> facade -> broker -> worker).
Not part of run_all (no `run`): `python -m bench.transport_hops [calls per turn] [run.py flags]`; bench/transport_steps.md
holds its results and a per-step breakdown."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import grpc
import zmq

from bench.common import ROOT
from common import wire as P
from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
from tests.broker_peer import run_dir_of
from tests.service import PYTHON, free_port, start_service

TURNS = 3
ECHO = "pythonml.v1.Diagnostics/Echo"
ZMQ_ECHO = ("import sys, zmq\nr = zmq.Context().socket(zmq.ROUTER)\nr.bind(sys.argv[1])\n"
            "while True:\n    r.send_multipart(r.recv_multipart())")


def timed(fn, n: int) -> list:
    for _ in range(100):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(n: int, extra: list) -> None:
    port = free_port()
    bare = subprocess.Popen([PYTHON, os.path.join(ROOT, "bench", "bare_echo_server.py"), str(port)],
                            stdout=subprocess.PIPE)
    bare.stdout.readline()
    zep = f"ipc:///tmp/pml-zecho-{os.getpid()}.sock"
    zecho = subprocess.Popen([PYTHON, "-c", ZMQ_ECHO, zep])
    ctx = zmq.Context.instance()
    rows: dict = {k: [] for k in ("bare gRPC Echo", "one ZeroMQ round trip (Python echo)",
                                  "broker + worker, reply via broker", "broker + worker, direct reply",
                                  "whole path: gRPC -> facade -> broker -> worker")}
    try:
        with start_service(["--pools", "fake", "--log-level", "warning"] + extra) as svc:
            run_dir = run_dir_of(svc.proc.pid)
            dealer = ctx.socket(zmq.DEALER)
            dealer.connect(f"ipc://{run_dir}/frontend.sock")
            pull = ctx.socket(zmq.PULL)
            reply = f"ipc://{run_dir}/reply-bench{os.getpid()}.sock"
            pull.bind(reply)
            z = ctx.socket(zmq.DEALER)
            z.connect(zep)
            payload = X.EchoRequest(pool="fake", payload=b"x").SerializeToString()
            ids = iter(range(10**9))

            def via_broker(direct: bool):
                header = {"id": f"h{next(ids)}", "method": ECHO, "pool": "fake", "device": "", "model": "",
                          "caller": "bench"}
                if direct:
                    header["reply"] = reply
                dealer.send_multipart(P.encode(P.REQUEST, header, [payload]))
                poller = zmq.Poller()
                poller.register(dealer, zmq.POLLIN)
                poller.register(pull, zmq.POLLIN)
                while True:
                    for sock, _ in poller.poll():
                        command, h, _ = P.decode(sock.recv_multipart(), P.TO_FACADE_COMMANDS)
                        if command in (P.FINAL, P.ERROR) and h.get("id") == header["id"]:
                            return

            def zhop():
                z.send_multipart([P.MAGIC, P.REQUEST, payload])
                z.recv_multipart()
            bare_stub = XG.DiagnosticsStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            stub = XG.DiagnosticsStub(svc.channel())
            req = X.EchoRequest(pool="fake", payload=b"x")
            for _ in range(TURNS):
                rows["bare gRPC Echo"] += timed(lambda: list(bare_stub.Echo(req)), n)
                rows["one ZeroMQ round trip (Python echo)"] += timed(zhop, n)
                rows["broker + worker, reply via broker"] += timed(lambda: via_broker(False), n)
                rows["broker + worker, direct reply"] += timed(lambda: via_broker(True), n)
                rows["whole path: gRPC -> facade -> broker -> worker"] += timed(lambda: list(stub.Echo(req)), n)
    finally:
        bare.kill()
        zecho.kill()
        zecho.wait()
        if os.path.exists(zep[len("ipc://"):]):
            os.unlink(zep[len("ipc://"):])
    base = statistics.median(rows["bare gRPC Echo"])
    print("| hop | p50 ms | p90 ms | p50 / bare gRPC |\n|---|---|---|---|")
    for name, lat in rows.items():
        lat.sort()
        p50 = statistics.median(lat)
        print(f"| {name} | {p50 * 1e3:.3f} | {lat[int(len(lat) * 0.9)] * 1e3:.3f} | {p50 / base:.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, sys.argv[2:])
