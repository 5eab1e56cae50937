"""System scenarios across hosts: two Recommendations replicas and a Marketplace, each in its own
network namespace (tests/system/testbed.py), mTLS on, the marketplace balancing per request over both.
A fourth namespace runs the load (tests/system/load.py) against the marketplace's home page, which
costs one RPC per view. Each scenario is bounded in time and requests and asserts exact counts.

Needs iproute2 (`ip netns`) and root, which an ordinary user gets in user namespaces of its own
(in_namespaces.py, the test's main); tagged `local` and `exclusive` in BUILD (no sandbox, nothing else
running beside it, since the figures are relative to a peak measured in the same run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.processes.processes import ChildProcess, runfile
from services.marketplace.app import UNAVAILABLE_NOTICE
from tests.system.in_namespaces import SKIP_REASON
from tests.system.testbed import Host, Testbed
from tools.certs.certs import mint_all, service_flags

# Runfiles paths, looked up when the test bed starts them.
RECOMMENDATIONS = "services/recommendations/recommendations"
MARKETPLACE = "services/marketplace/marketplace"
LOAD = "tests/system/load.py"
GRPC_PORT, HEALTH_PORT, WEB_PORT = 50051, 50052, 8080
PAGE_BUDGET = 0.3  # seconds a page may spend on Recommendations (RECOMMENDATIONS_TIMEOUT)
HANG = 1.5  # a page slower than this counts as hung: the budget plus generous scheduling slack


class Bookstore:
    """The running system on the test bed; replicas can be killed, stopped and started again."""

    def __init__(self, bed: Testbed, certs: Path) -> None:
        self.bed, self.certs = bed, certs
        self.rec_hosts = [bed.host("rec1"), bed.host("rec2")]
        self.web_host = bed.host("web")
        self.client = bed.host("client")
        self.replicas: dict[str, ChildProcess] = {}
        for host in self.rec_hosts:
            self.start_replica(host)
        backends = ",".join(f"{host.address}:{GRPC_PORT}" for host in self.rec_hosts)
        self.web = self.web_host.spawn(
            "web",
            [
                runfile(MARKETPLACE), "--host", self.web_host.address, "--port", WEB_PORT, "--processes", 1,
                "--no-access-log",
                "--recommendations-addr", backends, "--recommendations-timeout", PAGE_BUDGET,
                *service_flags(certs, "marketplace"),
            ],
            on_line=lambda line: None,
        )  # fmt: skip
        self.url = f"http://{self.web_host.address}:{WEB_PORT}/"
        deadline = time.monotonic() + 30
        while self.load(rate=0, duration=2, max_requests=1)["outcomes"] != {"ok": 1}:
            assert time.monotonic() < deadline, "the marketplace never served a full page"
            time.sleep(0.2)

    def start_replica(self, host: Host) -> ChildProcess:
        process = host.spawn(
            host.name,
            [
                runfile(RECOMMENDATIONS), "--host", host.address, "--port", GRPC_PORT, "--health-port", HEALTH_PORT,
                "--drain-seconds", 1, "--shutdown-grace", 5, *service_flags(self.certs, "recommendations"),
            ],
            on_line=lambda line: None,
        )  # fmt: skip
        wait_for_line(process, r"serving books\.recommendations\.v1\.RecommendationService")
        self.replicas[host.name] = process
        return process

    def ensure_replicas(self) -> None:
        """Both replicas running, and the marketplace serving whole pages again (it reconnects with
        backoff after a scenario took the replicas down)."""
        for host in self.rec_hosts:
            if self.replicas[host.name].poll() is not None:
                self.start_replica(host)
        deadline = time.monotonic() + 15
        while self.load(rate=50, duration=2, max_requests=20)["outcomes"] != {"ok": 20}:
            assert time.monotonic() < deadline, "pages are not whole again 15 s after the replicas started"

    def load(self, rate: float, duration: float, max_requests: int = 1_000_000, connections: int = 16) -> dict:
        """Runs load.py in the client namespace; its JSON report."""
        result = self.client.run(
            [
                sys.executable, runfile(LOAD), "--url", self.url, "--notice", UNAVAILABLE_NOTICE,
                "--rate", rate, "--duration", duration,
                "--max-requests", max_requests, "--connections", connections, "--timeout", HANG,
            ],
            timeout=duration + 30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def load_in_background(self, rate: float, duration: float) -> tuple[threading.Thread, dict]:
        report: dict = {}
        thread = threading.Thread(target=lambda: report.update(self.load(rate, duration)), daemon=True)
        thread.start()
        return thread, report


def wait_for_line(process: ChildProcess, pattern: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(re.search(pattern, line) for line in list(process.lines)):
        if process.poll() is not None:
            raise AssertionError(f"{process.name} exited ({process.poll()}):\n" + "\n".join(process.lines))
        assert time.monotonic() < deadline, f"{process.name} never logged /{pattern}/"
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bookstore]:
    if os.geteuid() != 0:  # in_namespaces.py made us root of our own namespaces if it could
        pytest.skip(os.environ.get(SKIP_REASON, "the system tests need root or user namespaces (in_namespaces.py)"))
    certs = tmp_path_factory.mktemp("certs")
    mint_all(certs, services=("recommendations", "marketplace"))
    with Testbed() as bed:
        yield Bookstore(bed, certs)


@pytest.fixture(scope="module")
def peak(system: Bookstore) -> float:
    """Page views per second with every connection busy, measured on this run's test bed."""
    system.load(rate=0, duration=3)  # warm-up: connections, caches, JIT-free but page cache
    report = system.load(rate=0, duration=5)
    assert report["failed"] == 0, report
    print(f"peak: {report['rate']} pages/s, p99 {report['p99_ms']} ms")
    return report["rate"]


@pytest.fixture(autouse=True)
def both_replicas_up(system: Bookstore) -> None:
    system.ensure_replicas()


def test_steady_load_at_80_percent_of_peak_fails_nothing_and_memory_stays_flat(system: Bookstore, peak: float) -> None:
    rate = 0.8 * peak
    system.load(rate=rate, duration=10)  # warm-up at the same rate before the memory baseline
    pids = {"rec1": system.replicas["rec1"].pid, "rec2": system.replicas["rec2"].pid, "web": system.web.pid}
    before = {name: rss_kib(pid) for name, pid in pids.items()}
    report = system.load(rate=rate, duration=60)
    after = {name: rss_kib(pid) for name, pid in pids.items()}
    growth = {name: round((after[name] - before[name]) / before[name] * 100, 2) for name in pids}
    print(f"steady: {report}\nRSS KiB before {before}, after {after}, growth % {growth}")
    assert report["failed"] == 0, report
    assert report["requests"] >= 0.95 * rate * 60, f"the load generator fell behind: {report}"
    assert all(percent <= 5.0 for percent in growth.values()), growth


def test_kill_9_of_one_replica_under_load_fails_no_page(system: Bookstore, peak: float) -> None:
    thread, report = system.load_in_background(rate=0.5 * peak, duration=15)
    time.sleep(5)
    system.replicas["rec1"].signal(signal.SIGKILL)
    thread.join(timeout=60)
    print(f"kill -9: {report}")
    assert report["requests"] > 0.9 * 0.5 * peak * 15
    assert report["failed"] == 0, report
    assert system.replicas["rec1"].poll() == -signal.SIGKILL


def test_rolling_restart_under_load_fails_no_page(system: Bookstore, peak: float) -> None:
    thread, report = system.load_in_background(rate=0.5 * peak, duration=30)
    time.sleep(3)
    for host in system.rec_hosts:
        assert system.replicas[host.name].stop(timeout=15) == 0  # SIGTERM: drain, then exit 0
        system.start_replica(host)
        time.sleep(3)  # the marketplace reconnects before the other replica goes
    thread.join(timeout=60)
    print(f"rolling restart: {report}")
    assert report["failed"] == 0, report


def test_with_every_replica_gone_each_page_answers_in_time_with_the_notice(system: Bookstore) -> None:
    for process in system.replicas.values():
        process.signal(signal.SIGKILL)
        process.wait(timeout=10)
    report = system.load(rate=20, duration=10, max_requests=150, connections=4)
    print(f"all replicas gone: {report}")
    assert report["outcomes"] == {"degraded": 150}, report
    assert report["max_ms"] < HANG * 1000


def test_a_cut_link_to_one_replica_never_hangs_a_page(system: Bookstore, peak: float) -> None:
    victim = system.rec_hosts[0]
    thread, report = system.load_in_background(rate=0.5 * peak, duration=25)
    time.sleep(5)
    system.bed.cut(victim)
    time.sleep(15)
    system.bed.mend(victim)
    thread.join(timeout=60)
    print(f"cut link: {report}")
    assert set(report["outcomes"]) <= {"ok", "degraded"}, report  # no timeouts, resets or 5xx
    assert report["max_ms"] < HANG * 1000, report
    assert report["requests"] > 0.9 * 0.5 * peak * 25
    # The channel drops the dead connection after its 3 s keepalive timeout (TCP_USER_TIMEOUT): from
    # then on every page is whole, although the link stays down until second 20.
    assert max(map(int, report["failures_by_second"]), default=0) <= 11, report["failures_by_second"]
