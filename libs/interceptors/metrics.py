"""Prometheus RED metrics for gRPC servers and clients (prometheus-client).

Server: `grpc_server_started_total`, `grpc_server_handled_total` (with `grpc_code`),
`grpc_server_handling_seconds` (histogram, 100 µs to 10 s) and `grpc_server_in_flight`; client: the
same with `grpc_client_` and no gauge. Labels are `grpc_service`, `grpc_method`, `grpc_type`: calls to
methods no service registered count as service and method "unknown", so a client cannot create
label values at will. `start_metrics_server(port)` exposes /metrics over HTTP.
"""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from libs.interceptors.core import Call, Middleware

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LABELS = ("grpc_service", "grpc_method", "grpc_type")


class RpcMetrics:
    """The metric families of one side (server or client) in one registry."""

    _instances: dict[tuple[str, int], RpcMetrics] = {}

    @classmethod
    def of(cls, side: str, registry: CollectorRegistry = REGISTRY) -> RpcMetrics:
        """The families of `side` in `registry`, created once (a registry refuses duplicates)."""
        key = (side, id(registry))
        if key not in cls._instances:
            cls._instances[key] = cls(side, registry)
        return cls._instances[key]

    def __init__(self, side: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.started = Counter(f"grpc_{side}_started_total", f"RPCs started on the {side}.", _LABELS, registry=registry)
        self.handled = Counter(
            f"grpc_{side}_handled_total", f"RPCs completed on the {side}, by status code.", (*_LABELS, "grpc_code"),
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            f"grpc_{side}_handling_seconds", f"RPC latency on the {side}, until the status is known.", _LABELS,
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.in_flight = (
            Gauge("grpc_server_in_flight", "RPCs being handled now.", _LABELS, registry=registry)
            if side == "server"
            else None
        )


class _MethodSeries:
    """The labelled children of one method, looked up once (`labels()` costs a lock and a dict)."""

    def __init__(self, metrics: RpcMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics, self._labels = metrics, labels
        self.started = metrics.started.labels(*labels)
        self.latency = metrics.latency.labels(*labels)
        self.in_flight = metrics.in_flight.labels(*labels) if metrics.in_flight is not None else None
        self._handled: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._metrics.handled.labels(*self._labels, code)
        return child


class ServerMetrics(Middleware):
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.metrics = RpcMetrics.of("server", registry)
        self._series: dict[tuple[str, str, str], _MethodSeries] = {}

    def series(self, labels: tuple[str, str, str]) -> _MethodSeries:
        found = self._series.get(labels)
        if found is None:  # bounded: registered methods, plus "unknown"
            found = self._series[labels] = _MethodSeries(self.metrics, labels)
        return found

    def begin(self, call: Call) -> None:
        series = self.series((call.service, call.name, call.kind))
        call.series = series
        series.started.inc()
        if series.in_flight is not None and call.context is not None:
            series.in_flight.inc()

    def end(self, call: Call) -> None:
        series = call.series
        series.handled(call.code.name).inc()
        series.latency.observe(call.duration)
        if series.in_flight is not None and call.context is not None:
            series.in_flight.dec()


def start_metrics_server(port: int, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
    """Serves /metrics on `host:port` from a background thread."""
    prometheus_client.start_http_server(port, addr=host, registry=registry)
