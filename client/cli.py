"""Client CLI for people: `python run.py call VERB ...` (health, stats, echo, plus every client/verbs_*.py)."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import grpc


def channel_for(args) -> grpc.Channel:
    ch = grpc.insecure_channel(args.address, options=[("grpc.max_receive_message_length", 256 * 2**20),
                                                      ("grpc.max_send_message_length", 256 * 2**20)])
    if args.token:
        ch = grpc.intercept_channel(ch, _TokenAdder(args.token))
    return ch


class _TokenAdder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self.md = ("authorization", f"Bearer {token}")

    def _details(self, d):
        md = list(d.metadata or []) + [self.md]
        return d._replace(metadata=md) if hasattr(d, "_replace") else _Details(d, md)

    def intercept_unary_unary(self, cont, d, req):
        return cont(_Details(d, list(d.metadata or []) + [self.md]), req)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, cont, d, it):
        return cont(_Details(d, list(d.metadata or []) + [self.md]), it)

    intercept_stream_stream = intercept_stream_unary


class _Details(grpc.ClientCallDetails):
    def __init__(self, d, md):
        self.method, self.timeout, self.metadata = d.method, d.timeout, md
        self.credentials, self.wait_for_ready = d.credentials, getattr(d, "wait_for_ready", None)
        self.compression = getattr(d, "compression", None)


def cmd_health(args, channel) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    stub = health_pb2_grpc.HealthStub(channel)
    services = args.service or ["", "ml.MediapipeService", "ml.TransformersService", "ml.ModelManagementService",
                                "inference.GRPCInferenceService", "pythonml.v1.Speech", "pythonml.v1.Pipelines",
                                "pythonml.v1.Stats"]
    bad = 0
    for svc in services:
        try:
            st = stub.Check(health_pb2.HealthCheckRequest(service=svc), timeout=args.timeout).status
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(st)
        except grpc.RpcError as exc:
            name = f"{exc.code().name}: {exc.details()}"
        bad += name != "SERVING"
        print(f"{svc or '(overall)':36s} {name}")
    return 0 if bad == 0 else 1


def cmd_stats(args, channel) -> int:
    from google.protobuf import json_format
    from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
    resp = XG.StatsStub(channel).GetStats(X.StatsRequest(), timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(resp))
        return 0
    print(f"uptime {resp.uptime_s:.0f}s, malformed frames {resp.malformed_frames}")
    print(f"{'worker':22s} {'pid':>7s} {'state':9s} {'rss MB':>8s} {'uss MB':>8s} {'pss MB':>8s} {'cuda MB':>8s} "
          f"{'infl':>4s} {'queue':>5s} {'rst':>3s} {'served':>7s} {'cpus':>6s} {'nice':>4s} {'sched':6s} {'thr':>3s} {'node':14s} models")
    for w in resp.workers:
        models = ",".join(f"{m.model_id}({m.ram_mb:.0f}MB)" for m in w.models) or "-"
        print(f"{w.worker_id:22s} {w.pid:7d} {w.state:9s} {w.rss_mb:8.1f} {w.uss_mb:8.1f} {w.pss_mb:8.1f} "
              f"{w.cuda_allocated_mb:8.1f} {w.inflight:4d} {w.queue_depth:5d} {w.restarts:3d} {w.requests_served:7d} "
              f"{w.cpus or '-':>6s} {w.nice:4d} {w.sched or '-':6s} {w.threads:3d} {_node(w):14s} {models}")
    return 0


def _node(w) -> str:
    """'local' for a child of the service; 'ray:' and the start of the Ray node id for a Ray-placed worker."""
    return "local" if w.placement != "ray" else f"ray:{w.node[:10]}"


def cmd_echo(args, channel) -> int:
    from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
    import time
    stub = XG.DiagnosticsStub(channel)
    t0 = time.perf_counter()
    for reply in stub.Echo(X.EchoRequest(pool=args.pool, device=args.device, action=args.action,
                                         payload=args.payload.encode(), sleep_ms=args.sleep_ms, parts=args.parts),
                           timeout=args.timeout):
        print(f"part {reply.part} from {reply.worker_id} (pid {reply.pid}): {reply.payload.decode(errors='replace')}")
    print(f"round trip {1000 * (time.perf_counter() - t0):.2f} ms")
    return 0


COMMON_OPTIONS = (  # (flag, kwargs, default): accepted before or after the verb
    ("--address", {"help": "host:port of the service (default $PML_ADDRESS or 127.0.0.1:50051)"},
     lambda: os.environ.get("PML_ADDRESS", "127.0.0.1:50051")),
    ("--token", {"help": "shared token sent as 'authorization: Bearer' (default $PYTHONML_TOKEN)"},
     lambda: os.environ.get("PYTHONML_TOKEN", "")),
    ("--timeout", {"type": float, "help": "deadline of each call in seconds (default 60)"}, lambda: 60.0),
)


def _add_common_options(parser: argparse.ArgumentParser, with_defaults: bool) -> None:
    """The main parser holds the real defaults; each verb's copy defaults to SUPPRESS, so a value given
    before the verb is not overwritten when it is not repeated after it."""
    for flag, kw, default in COMMON_OPTIONS:
        if flag in parser._option_string_actions:  # a verb that defines its own meaning keeps it
            continue
        parser.add_argument(flag, default=default() if with_defaults else argparse.SUPPRESS, **kw)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run.py call", description="Call a running PythonML service. "
                                 "--address, --token and --timeout go before or after the verb.")
    _add_common_options(ap, with_defaults=True)
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("health", help="health status per service")
    p.add_argument("service", nargs="*")
    p.set_defaults(func=cmd_health)
    p = sub.add_parser("stats", help="per-worker memory, load and models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("echo", help="round trip through a pool's worker")
    p.add_argument("pool")
    p.add_argument("--device", default="")
    p.add_argument("--action", default="echo")
    p.add_argument("--payload", default="hello")
    p.add_argument("--sleep-ms", type=int, default=0)
    p.add_argument("--parts", type=int, default=0)
    p.set_defaults(func=cmd_echo)
    pkg_dir = os.path.dirname(os.path.abspath(__file__))
    for mod in sorted(m.name for m in pkgutil.iter_modules([pkg_dir]) if m.name.startswith("verbs_")):
        try:
            importlib.import_module(f"client.{mod}").register(sub)
        except Exception as exc:  # a broken verb module must not break the others
            print(f"warning: client/{mod}.py not loaded: {exc}", file=sys.stderr)
    for verb_parser in {id(p): p for p in sub.choices.values()}.values():  # aliases share a parser
        _add_common_options(verb_parser, with_defaults=False)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    channel = channel_for(args)
    try:
        return int(args.func(args, channel) or 0)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:  # an input file named on the command line
        print(f"error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    finally:
        channel.close()
