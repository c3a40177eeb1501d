"""Prometheus metrics for the server, in a registry of its own (served at ``/metrics``)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("shipyard_requests", "Requests answered", ["model", "protocol", "code"], registry=r)
        self.errors = Counter("shipyard_request_errors", "Requests answered with an error", ["model", "protocol", "code"], registry=r)
        self.latency = Histogram("shipyard_request_latency_seconds", "Time from request to answer", ["model", "protocol"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("shipyard_queue_seconds", "Time a request waited for the engine", ["model"],
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("shipyard_batch_size", "Requests per engine call", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.loaded = Gauge("shipyard_loaded_versions", "Versions loaded and serving", ["model"], registry=r)
        self.load_failures = Counter("shipyard_load_failures", "Versions that failed to load", ["model"], registry=r)

    def observe_request(self, model: str, protocol: str, code: int | str, seconds: float) -> None:
        code = str(code)
        self.requests.labels(model, protocol, code).inc()
        if code not in ("200", "OK"):
            self.errors.labels(model, protocol, code).inc()
        self.latency.labels(model, protocol).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
