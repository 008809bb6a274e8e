"""A/B of facade variants on the no-op round trip (issue 16's transport floor): the bare grpc.aio Echo server
and one service per variant (run.py with the variant's environment), measured in interleaved turns with
bench_core's grpc.aio client, so that a burst of load on the shared machine hits every side alike.

`python -m bench.facade_ab [--turns N] [--calls N] [--clients N] NAME[@TREE]:VAR=VALUE[,VAR=VALUE] ...`
e.g. `asyncio:PML_UVLOOP=0 uvloop:PML_UVLOOP=1`; `before@/tmp/old:` runs run.py of another checkout (say a
`git archive` of an older commit) for a before/after in one run. Prints p50/p90 per side and each p50 over
bare's.
Not part of run_all (no `run`); bench/transport_steps.md holds its results."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess

from bench.bench_core import _latencies
from bench.common import ROOT, pct
from tests.service import PYTHON, free_port, start_service


def parse_variant(text: str) -> tuple:
    """'NAME[@TREE]:VAR=VALUE,...' -> (name, tree or '', env)."""
    name, _, assigns = text.partition(":")
    name, _, tree = name.partition("@")
    env = dict(a.split("=", 1) for a in assigns.split(",") if a)
    return name, tree, env


def start_in(tree: str, env: dict):
    """start_service of this checkout, or of `tree` (its run.py and folder)."""
    import tests.service as service
    own = service.ROOT
    service.ROOT = tree or own
    try:
        return start_service(["--pools", "fake", "--log-level", "warning"], env=dict({"PML_FAKE_CAPACITY": "32"}, **env))
    finally:
        service.ROOT = own


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--calls", type=int, default=400, help="calls per side per turn")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--bare-env", default="", help="VAR=VALUE,... for the bare server (e.g. PML_UVLOOP=1)")
    ap.add_argument("variants", nargs="+")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    port = free_port()
    bare_env = dict(os.environ, **parse_variant("bare:" + args.bare_env)[2])
    bare = subprocess.Popen([PYTHON, os.path.join(ROOT, "bench", "bare_echo_server.py"), str(port)],
                            stdout=subprocess.PIPE, env=bare_env)
    bare.stdout.readline()
    lat: dict = {"bare": []}
    lat.update({name: [] for name, _, _ in variants})
    try:
        with contextlib.ExitStack() as stack:
            services = [(name, stack.enter_context(start_in(tree, env))) for name, tree, env in variants]
            for _ in range(args.turns):
                lat["bare"] += asyncio.run(_latencies(f"127.0.0.1:{port}", "fake", args.clients, args.calls))
                for name, svc in services:
                    lat[name] += asyncio.run(_latencies(svc.address, "fake", args.clients, args.calls))
    finally:
        bare.kill()
        bare.wait()
    base = pct(lat["bare"], 50)
    print(f"{args.clients} client(s), {args.turns} turns x {args.calls} calls per side")
    print("| side | p50 ms | p90 ms | p50 / bare |\n|---|---|---|---|")
    for name, xs in lat.items():
        print(f"| {name} | {pct(xs, 50):.3f} | {pct(xs, 90):.3f} | {pct(xs, 50) / base:.2f} |")


if __name__ == "__main__":
    main()
