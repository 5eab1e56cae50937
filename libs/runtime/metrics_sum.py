"""One /metrics for a service that runs in several processes: the sum over all of them.

Each child serves its own registry on a Unix socket in a directory only its supervisor and siblings
can reach (`serve_child_metrics`); the supervisor's `ChildrenMetrics` asks every live child at each
scrape and adds up what they say. Why not prometheus_client's multiprocess mode: it sees only the
library's own metric objects, and our hot-path metrics (libs/interceptors/metrics.py), the transport
counts from channelz and the process collector are collectors of their own, which every child still
reports here, untouched.

Counters and histograms stay monotonic when a child dies: what it last reported is kept and added to
the live children's sums. The supervisor also asks every second between scrapes, so a child killed
with SIGKILL loses at most its last second of counts (a single process loses them all). Gauges are
the sum over live children (in flight, memory, open files), except start times and `_created` (the
earliest) and `*_info` (1, not the number of children).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SCRAPE_TIMEOUT = 5.0  # seconds a child may take to answer; a busy one is reported with its last figures
REFRESH_INTERVAL = 1.0  # seconds between the supervisor's own reads: what a killed child may lose
_MONOTONIC = {"counter", "histogram", "summary", "gaugehistogram"}
logger = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]  # sample name, labels


def socket_directory(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A new private directory for Unix sockets: in the temporary directory unless that path is too
    long for a socket's (108 bytes on Linux, as under Bazel's test sandboxes), then in /tmp."""
    base = tempfile.gettempdir()
    return tempfile.TemporaryDirectory(prefix=prefix, dir=base if len(base) <= 64 else "/tmp")


def serve_child_metrics(path: Path, registry: CollectorRegistry = REGISTRY) -> None:
    """In a child: answers every connection to the Unix socket `path` with `registry` in OpenMetrics
    text (it keeps `_created` within its family), from a daemon thread."""
    _serve_on_unix_socket(path, lambda: generate_latest(registry))  # type: ignore[no-untyped-call]


def _serve_on_unix_socket(path: Path, body: Callable[[], bytes]) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)

    def answer() -> None:
        while True:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(SCRAPE_TIMEOUT)  # a reader that stops reading does not hold the thread
                try:
                    connection.sendall(body())
                except OSError:  # the reader went away
                    pass
                except Exception:  # a collector failed: say so, and answer the next scrape
                    logger.exception("cannot answer a metrics scrape on %s", path)

    threading.Thread(target=answer, name=f"metrics-{path.name}", daemon=True).start()


async def read_sums(path: Path) -> bytes:
    """In a child serving /metrics itself (a web service's processes): the supervisor's sums, in
    Prometheus text format, from its Unix socket `path` (`ChildrenMetrics.sums`)."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), SCRAPE_TIMEOUT)
    try:
        return await asyncio.wait_for(reader.read(), SCRAPE_TIMEOUT)
    finally:
        writer.close()


def _scrape(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(SCRAPE_TIMEOUT)
        connection.connect(str(path))
        chunks = []
        while chunk := connection.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _combine(family: str, sample: str, kind: str) -> str:
    """How the children's values of one sample make the service's value."""
    if sample.endswith("_created") or family.endswith("_start_time_seconds"):
        return "min"
    if kind in ("info", "stateset") or family.endswith("_info"):
        return "max"
    return "sum"


class _Families:
    """Samples added up by family, in the order they first appeared (histogram buckets stay in order)."""

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[str, str, str]] = {}  # family → (type, help, unit)
        self.values: dict[str, dict[Key, float]] = {}

    def add(self, families: Iterable[Metric], only_monotonic: bool = False) -> None:
        for family in families:
            if not only_monotonic or family.type in _MONOTONIC:
                samples = ((s.name, tuple(s.labels.items()), s.value) for s in family.samples)
                self._add(family.name, (family.type, family.documentation, family.unit), samples)

    def absorb(self, other: _Families) -> None:
        for name, values in other.values.items():
            self._add(name, other.kinds[name], ((sample, labels, value) for (sample, labels), value in values.items()))

    def _add(self, family: str, kind: tuple[str, str, str], samples: Iterable[tuple[str, Labels, float]]) -> None:
        self.kinds.setdefault(family, kind)
        values = self.values.setdefault(family, {})
        for sample, labels, value in samples:
            key = (sample, labels)  # a child names a series the same way each time
            if key not in values:
                values[key] = value
                continue
            rule = _combine(family, sample, kind[0])
            old = values[key]
            values[key] = old + value if rule == "sum" else (min if rule == "min" else max)(old, value)

    def metrics(self) -> Iterator[Metric]:
        for name, (kind, documentation, unit) in self.kinds.items():
            metric = Metric(name, documentation, kind, unit)
            for (sample, labels), value in self.values[name].items():
                metric.add_sample(sample, dict(labels), value)
            yield metric


class ChildrenMetrics(Collector):
    """The supervisor's side: scrapes every live child, keeps what dead children counted, and reports
    the sums, with the supervisor's own figures (live processes, deaths)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._last: dict[int, list[Metric]] = {}  # pid → what it said at the last scrape
        self._retired = _Families()  # counters and histograms of children that have ended
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._processes = Gauge("supervised_processes", "Processes serving this service now.", registry=self.registry)
        self._deaths = Counter(
            "supervised_process_deaths",
            "Processes that died while serving (each is restarted, with backoff, or the service gives up).",
            registry=self.registry,
        )
        self._http: list[WSGIServer] = []
        self._closed = threading.Event()

    def socket_of(self, pid: int) -> Path:
        return self._directory / f"{pid}.sock"

    @property
    def sums(self) -> Path:
        """A Unix socket answering with the sums in Prometheus text format, for children that serve
        /metrics on their own port (`read_sums`)."""
        return self._directory / "sums"

    def serve_sums(self) -> None:
        _serve_on_unix_socket(self.sums, lambda: prometheus_client.generate_latest(self.registry))

    def set_children(self, count: int) -> None:
        self._processes.set(count)

    def count_death(self) -> None:
        self._deaths.inc()

    def retire(self, pid: int) -> None:
        """`pid` has ended: from now on its last counters and histograms are a constant part of the sums."""
        with self._lock:
            self._retired.add(self._last.pop(pid, []), only_monotonic=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_of(pid).unlink()

    def refresh(self) -> None:
        """Reads every live child's figures now."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        for pid in [int(path.stem) for path in self._directory.glob("[0-9]*.sock")]:
            try:
                text = _scrape(self.socket_of(pid))
                self._last[pid] = list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]
            except (OSError, ValueError) as error:  # not listening yet, just killed, or too busy
                logger.warning("no metrics from pid %d (%s): its last figures stand in", pid, error)

    def refresh_every(self, interval: float) -> None:
        """Refreshes from a daemon thread until `close`."""

        def loop() -> None:
            while not self._closed.wait(interval):
                self.refresh()

        threading.Thread(target=loop, name="children-metrics", daemon=True).start()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._refresh()
            total = _Families()
            for families in self._last.values():
                total.add(families)
            total.absorb(self._retired)
        yield from total.metrics()

    def serve(self, port: int, host: str) -> socket.socket:
        """Serves the sums on http://host:port/metrics from a thread; returns the listening socket."""
        server, _ = prometheus_client.start_http_server(port, addr=host, registry=self.registry)
        self._http.append(server)
        return server.socket

    def close(self) -> None:
        self._closed.set()
        for server in self._http:
            server.shutdown()
