"""Prometheus metrics for the server, in a registry of its own (served at ``/metrics``)."""
from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _observer(child):
    """``child.observe`` (a labelled Histogram) as one bucket increment found by bisection and
    one sum increment: the same counts, without the per-call checks and the scan over the bucket
    bounds in Python (~0.8 us a call on the request path, three calls a request). prometheus_client
    keeps sorted bounds ending in +Inf and one value per bucket; without them, its own observe."""
    try:
        bounds, buckets, total = child._upper_bounds, child._buckets, child._sum
    except AttributeError:  # pragma: no cover - another prometheus_client layout
        return child.observe
    if len(bounds) != len(buckets) or list(bounds) != sorted(bounds) or bounds[-1] != float("inf"):
        return child.observe  # pragma: no cover

    def observe(amount: float) -> None:
        total.inc(amount)
        buckets[bisect_left(bounds, amount)].inc(1)  # the first bound >= amount, as observe's scan finds

    return observe


def _incrementer(child):
    """``child.inc`` (a labelled Counter) without its per-call checks; its own inc otherwise."""
    value = getattr(child, "_value", None)
    return (lambda: value.inc(1)) if value is not None and hasattr(value, "inc") else child.inc


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
        self._children: dict[tuple, tuple] = {}        # (model, protocol, code) -> request metrics
        self._batch_children: dict[str, tuple] = {}    # model -> batch metrics

    def observe_request(self, model: str, protocol: str, code: int | str, seconds: float) -> None:
        key = (model, protocol, code)
        children = self._children.get(key)
        if children is None:  # labels() validates and locks on every call: look the children up once
            text = str(code)
            children = (_incrementer(self.requests.labels(model, protocol, text)),
                        _incrementer(self.errors.labels(model, protocol, text)) if text not in ("200", "OK") else None,
                        _observer(self.latency.labels(model, protocol)))
            self._children[key] = children  # bounded: model names are the repository's or "_unknown"
        requests, errors, latency = children
        requests()
        if errors is not None:
            errors()
        latency(seconds)

    def observe_batch(self, model: str, size: int, waits: list[float]) -> None:
        children = self._batch_children.get(model)
        if children is None:
            children = self._batch_children[model] = (_observer(self.batch_size.labels(model)),
                                                       _observer(self.queue_time.labels(model)))
        batch_size, queue_time = children
        batch_size(size)
        for w in waits:
            queue_time(w)

    def render(self) -> bytes:
        return generate_latest(self.registry)
