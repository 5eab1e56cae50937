"""Prometheus RED metrics for gRPC servers and clients, exported through prometheus-client.

Server: `grpc_server_started_total`, `grpc_server_handled_total` (with `grpc_code`),
`grpc_server_handling_seconds` (histogram, 100 µs to 10 s) and `grpc_server_in_flight`; client: the
same with `grpc_client_`, without the gauge. Labels are `grpc_service`, `grpc_method`, `grpc_type`;
calls to methods no service registered count as service and method "unknown", so a client cannot
create label values at will. `start_metrics_server(port)` exposes /metrics over HTTP.

The numbers are plain Python counters under one lock per update, exported by a prometheus-client
custom collector at scrape time; the in-flight gauge is started minus handled, not a third count.
Measured (bench/interceptors): prometheus-client's own Counter, Gauge and Histogram objects take a
lock per operation and walk the buckets in Python, which cost several times more per call than
this, for the same exposition.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterator

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from libs.interceptors.core import Call, Middleware, Rpc

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LABELS = ["grpc_service", "grpc_method", "grpc_type"]


class Series:
    """The numbers of one (service, method, type)."""

    __slots__ = ("labels", "started", "handled", "buckets", "total_seconds")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = 0
        self.handled: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total_seconds = 0.0


class RpcMetrics(Collector):
    """The metrics of one side ("server" or "client"), registered once per registry."""

    # By registry object, not id(): a new registry may get the id of one already collected.
    _instances: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, RpcMetrics]] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, side: str, registry: CollectorRegistry = REGISTRY) -> RpcMetrics:
        sides = cls._instances.setdefault(registry, {})
        if side not in sides:
            sides[side] = cls(side, registry)
        return sides[side]

    def __init__(self, side: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.side = side
        self._series: dict[tuple[str, str, str], Series] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def series(self, labels: tuple[str, str, str]) -> Series:
        found = self._series.get(labels)
        if found is None:  # bounded: registered methods, plus "unknown"
            with self._lock:
                found = self._series.setdefault(labels, Series(labels))
        return found

    # lock.acquire()/release() rather than `with`: half the price, and these run on every call.
    def started(self, series: Series) -> None:
        self._lock.acquire()
        try:
            series.started += 1
        finally:
            self._lock.release()

    def finished(self, series: Series, code: str, seconds: float) -> None:
        self._lock.acquire()
        try:
            series.handled[code] = series.handled.get(code, 0) + 1
            series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            series.total_seconds += seconds
        finally:
            self._lock.release()

    def started_total(self) -> int:
        """Calls of every method that reached the middleware, so far."""
        with self._lock:
            return sum(series.started for series in self._series.values())

    def collect(self) -> Iterator[Metric]:
        side = self.side
        started = CounterMetricFamily(f"grpc_{side}_started", f"RPCs started on the {side}.", labels=_LABELS)
        handled = CounterMetricFamily(
            f"grpc_{side}_handled", f"RPCs completed on the {side}, by status code.", labels=[*_LABELS, "grpc_code"]
        )
        latency = HistogramMetricFamily(
            f"grpc_{side}_handling_seconds", f"RPC latency on the {side}, until the status is known.", labels=_LABELS
        )
        in_flight = GaugeMetricFamily(f"grpc_{side}_in_flight", "RPCs being handled now.", labels=_LABELS)
        with self._lock:
            snapshot = [
                (s.labels, s.started, dict(s.handled), list(s.buckets), s.total_seconds) for s in self._series.values()
            ]
        for labels, started_count, by_code, buckets, total in snapshot:
            started.add_metric(list(labels), started_count)
            for code, count in by_code.items():
                handled.add_metric([*labels, code], count)
            cumulative, points = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                cumulative += count
                points.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            latency.add_metric(list(labels), points, total)
            in_flight.add_metric(list(labels), started_count - sum(by_code.values()))
        yield from (started, handled, latency)
        if side == "server":
            yield in_flight


class ServerMetrics(Middleware):
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.metrics = RpcMetrics.of("server", registry)
        self._by_rpc: dict[Rpc, Series] = {}  # one entry per wrapped method: Rpc hashes by identity

    def begin(self, call: Call) -> Series:
        """Counts the call as started; returns the series its end is counted in."""
        series = self._by_rpc.get(call.rpc)
        if series is None:
            rpc = call.rpc
            series = self._by_rpc.setdefault(rpc, self.metrics.series((rpc.service, rpc.name, rpc.kind)))
        self.metrics.started(series)
        return series

    def end(self, call: Call, series: Series) -> None:
        self.metrics.finished(series, call.code_name, call.duration)


def start_metrics_server(port: int, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
    """Serves /metrics on `host:port` from a background thread."""
    prometheus_client.start_http_server(port, addr=host, registry=registry)
