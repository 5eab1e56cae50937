"""The calls that reached gRPC but never a handler of ours, counted with gRPC's own numbers.

gRPC keeps a backlog of calls the process has not picked up yet; when it is full (`--max-pending-calls`)
gRPC resets new calls (callers see CANCELLED, with no detail), drops those that wait too long, and fails
what arrives while the server stops. None of these reaches the middleware, so the access log and
`grpc_server_started_total` cannot have them (bench/RESULTS.md, "Figures behind the code"). gRPC's
channelz counts every call its transport started; from it:

- `grpc_server_transport_started_total`: channelz's count for the service port (not the probe port's
  health checks). Minus `grpc_server_started_total`: the calls waiting in gRPC's backlog (served by
  threads: or for a worker thread) or dropped from it; once the process has caught up, exactly the
  dropped ones;
- every 5 s, and once more when the drain ends, a WARNING when that number grew. (Calls refused by the
  final stop itself are past counting: gRPC forgets a server's numbers the moment it has stopped;
  clients retry them on another replica.)

channelz is read through the functions of grpcio that grpcio-channelz's servicer wraps (that package
would add only a servicer we do not serve); overload_test fails if their shape changes.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Iterator

from grpc._cython import cygrpc  # type: ignore[attr-defined]  # private to grpcio: grpc-stubs has no types for it
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from libs.interceptors.metrics import RpcMetrics

LOG_INTERVAL = 5.0


def channelz_server_ids() -> set[int]:
    """The channelz ids of every gRPC server of this process."""
    ids: set[int] = set()
    start = 0
    while True:
        page = json.loads(cygrpc.channelz_get_servers(start))
        for server in page.get("server", []):
            ids.add(int(server["ref"]["serverId"]))
        if page.get("end", True) or not ids:
            return ids
        start = max(ids) + 1


def transport_started(server_id: int) -> int | None:
    """The calls gRPC's transport started for one server; None once the server is gone (gRPC forgets a
    server as soon as it has stopped)."""
    try:
        found = json.loads(cygrpc.channelz_get_server(server_id))
    except ValueError:
        return None
    return int(found["server"].get("data", {}).get("callsStarted", 0))


class TransportCalls(Collector):
    """The transport's count of the service ports of this process, one collector per registry."""

    _instances: weakref.WeakKeyDictionary[CollectorRegistry, TransportCalls] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, registry: CollectorRegistry = REGISTRY) -> TransportCalls:
        if registry not in cls._instances:
            cls._instances[registry] = cls(registry)
        return cls._instances[registry]

    def __init__(self, registry: CollectorRegistry) -> None:
        self._last: dict[int, int] = {}  # by server: its count when last read
        self._retired = 0  # the counts of servers that have stopped, so the total never goes down
        self._lock = threading.Lock()
        registry.register(self)

    def add(self, server_id: int) -> None:
        with self._lock:
            self._last[server_id] = 0

    def retire(self, server_id: int) -> None:
        """Keeps a stopped server's last count in the total."""
        self.total()  # a last read, if gRPC still has the server
        with self._lock:
            self._retired += self._last.pop(server_id, 0)

    def total(self) -> int:
        with self._lock:
            servers = list(self._last)
        for server_id in servers:
            started = transport_started(server_id)
            with self._lock:
                if started is not None and server_id in self._last:
                    self._last[server_id] = started
        with self._lock:
            return self._retired + sum(self._last.values())

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "grpc_server_transport_started",
            "Calls gRPC's transport started on the service port, including those no handler saw.",
            value=self.total(),
        )


class DroppedCallsLog:
    """Logs when calls reached gRPC but no handler: channelz's count minus the middleware's."""

    def __init__(self, server_id: int, metrics: RpcMetrics, logger: logging.Logger) -> None:
        self._server_id = server_id
        self._metrics = metrics
        self._logger = logger
        self._baseline = metrics.started_total()  # other servers of the process may have counted calls
        self._reported = 0

    def check(self) -> int:
        """Logs and returns how much the number of unseen calls grew since it last did (0 once the server
        is gone)."""
        started = transport_started(self._server_id)
        if started is None:
            return 0
        unseen = started - (self._metrics.started_total() - self._baseline)
        grown = unseen - self._reported
        if grown <= 0:
            return 0
        self._reported = unseen
        self._logger.warning(
            "%d more calls reached gRPC but no handler (waiting in its backlog, refused by gRPC itself, its "
            "backlog full or headers it could not parse, or left by their callers first); %d in all "
            "(grpc_server_transport_started_total - grpc_server_started_total)",
            grown,
            unseen,
        )
        return grown
