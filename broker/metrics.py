"""Prometheus text endpoint exposing the broker's per-worker and per-pool figures.

Served on --host (loopback by default) like the gRPC port. When the shared token is set, a scrape must
send `Authorization: Bearer <token>` (401 otherwise): the figures name models, pools and pids.
"""
from __future__ import annotations

import hmac
import socket
import threading
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

WORKER_GAUGES = [
    ("rss_mb", "pythonml_worker_rss_megabytes", "Resident set size of the worker process"),
    ("uss_mb", "pythonml_worker_uss_megabytes", "Unique set size of the worker process"),
    ("pss_mb", "pythonml_worker_pss_megabytes", "Proportional set size of the worker process"),
    ("cuda_allocated_mb", "pythonml_worker_cuda_allocated_megabytes", "CUDA memory allocated by torch"),
    ("cuda_reserved_mb", "pythonml_worker_cuda_reserved_megabytes", "CUDA memory reserved by torch"),
    ("inflight", "pythonml_worker_inflight_requests", "Requests being processed by the worker"),
    ("capacity", "pythonml_worker_capacity", "Concurrent requests the worker accepts"),
    ("uptime_s", "pythonml_worker_uptime_seconds", "Seconds since the worker process started"),
]


class BrokerCollector:
    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def collect(self):
        snap = self.snapshot() or {}
        labels = ["worker", "pool", "device", "pid", "state"]
        gauges = {key: GaugeMetricFamily(name, doc, labels=labels) for key, name, doc in WORKER_GAUGES}
        restarts = CounterMetricFamily("pythonml_worker_restarts", "Restarts of the worker slot", labels=labels[:3])
        served = CounterMetricFamily("pythonml_worker_requests", "Requests answered by the worker", labels=labels[:3])
        models = GaugeMetricFamily("pythonml_worker_models_loaded", "Models loaded in the worker", labels=labels[:3])
        model_ram = GaugeMetricFamily("pythonml_model_ram_megabytes", "RAM measured for a model's load",
                                      labels=labels[:3] + ["model", "pipeline"])
        model_vram = GaugeMetricFamily("pythonml_model_vram_megabytes", "GPU memory measured for a model's load",
                                       labels=labels[:3] + ["model", "pipeline"])
        info = GaugeMetricFamily("pythonml_worker_info", "Where the worker runs: placement local or ray, its node "
                                 "(Ray node id, else the host name) and the node's address",
                                 labels=labels[:3] + ["placement", "node", "node_ip"])
        for w in snap.get("workers", []):
            lv = [w["worker_id"], w["pool"], w["device"], str(w["pid"]), w["state"]]
            info.add_metric(lv[:3] + [str(w.get("placement", "")), str(w.get("node", "")), str(w.get("node_ip", ""))], 1.0)
            for key, _, _ in WORKER_GAUGES:
                gauges[key].add_metric(lv, float(w.get(key) or 0))
            restarts.add_metric(lv[:3], float(w["restarts"]))
            served.add_metric(lv[:3], float(w["requests_served"]))
            models.add_metric(lv[:3], float(len(w.get("models") or [])))
            for m in w.get("models") or []:
                ml = lv[:3] + [str(m.get("model_id", "")), str(m.get("pipeline_type", ""))]
                model_ram.add_metric(ml, float(m.get("ram_mb") or 0))
                model_vram.add_metric(ml, float(m.get("vram_mb") or 0))
        yield from gauges.values()
        yield info
        yield restarts
        yield served
        yield models
        yield model_ram
        yield model_vram
        q = GaugeMetricFamily("pythonml_pool_queue_depth", "Requests waiting for a worker", labels=["pool", "device"])
        live = GaugeMetricFamily("pythonml_pool_live_workers", "Workers able to serve", labels=["pool", "device"])
        rej = CounterMetricFamily("pythonml_pool_rejected", "Requests refused with RESOURCE_EXHAUSTED", labels=["pool"])
        exp = CounterMetricFamily("pythonml_pool_expired", "Requests whose deadline passed in the queue", labels=["pool"])
        seen = set()
        for p in snap.get("pools", []):
            q.add_metric([p["pool"], p["device"]], p["queue_depth"])
            live.add_metric([p["pool"], p["device"]], p["live_workers"])
            if p["pool"] not in seen:
                seen.add(p["pool"])
                rej.add_metric([p["pool"]], p["rejected"])
                exp.add_metric([p["pool"]], p["expired"])
        yield q
        yield live
        yield rej
        yield exp
        mal = CounterMetricFamily("pythonml_malformed_frames", "Malformed frames dropped by the broker")
        mal.add_metric([], snap.get("malformed_frames", 0))
        yield mal


def require_token(app, token: str):
    """WSGI middleware: 401 unless the request carries `Authorization: Bearer <token>`."""
    expected = token.encode()

    def guarded(environ, start_response):
        value = environ.get("HTTP_AUTHORIZATION", "")
        presented = value[7:].strip().encode("latin-1", "replace") if value[:7].lower() == "bearer " else b""
        if presented and hmac.compare_digest(presented, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                             ("WWW-Authenticate", 'Bearer realm="pythonml-metrics"')])
        return [b"metrics need 'Authorization: Bearer <token>' (the service's shared token)\n"]
    return guarded


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes are not worth a log line each
        pass


def start_metrics(host: str, port: int, snapshot: Callable[[], dict], token: str = ""):
    """Serve /metrics on host:port in a daemon thread; with `token`, scrapes must present it."""
    REGISTRY.register(BrokerCollector(snapshot))
    app = make_wsgi_app(REGISTRY)
    if token:
        app = require_token(app, token)
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    httpd = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd
