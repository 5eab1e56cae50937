"""`bazel run //:dev`, the README's first command: every service of the list up and wired (every web service
serves its page and reaches each service it calls), Ctrl-C stops all of them in reverse order."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path

from libs.processes.processes import ChildProcess, free_ports, runfile
from services.gateway.testing import check_every_route_reaches_its_method
from services.registry import REGISTRY
from tools.monitoring.local import wait_until_ready

WEB = [service.name for service in REGISTRY.values() if service.kind == "http"]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        answer: dict = json.load(response)
        return answer


def test_dev_starts_every_service_wired_and_stops_cleanly_on_ctrl_c() -> None:
    ports = dict(zip(REGISTRY, free_ports(len(REGISTRY)), strict=True))
    dev = ChildProcess(
        "dev", [runfile("tools/dev/dev"), *(f"--port={name}={port}" for name, port in ports.items())]
    ).start()
    try:
        for name in WEB:
            dev.wait_for_port(ports[name])
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/", timeout=10) as response:
                assert response.status == 200, name
            ready = get_json(f"http://127.0.0.1:{ports[name]}/readyz")
            assert ready == {"status": "ready", **{callee: "SERVING" for callee in REGISTRY.calls(name)}}
        for name in REGISTRY.gateways():
            check_every_route_reaches_its_method(f"http://127.0.0.1:{ports[name]}/")
        dev.signal(signal.SIGINT)
        assert dev.stop(timeout=20) == 0
    finally:
        dev.stop()
    output = "\n".join(dev.lines)
    for name in (n for n in WEB if REGISTRY[n].public):
        assert f"open http://127.0.0.1:{ports[name]}/" in output
    for name, port in ports.items():
        assert f"{name:>15} | " in output, f"no log line from {name}"
        assert f"| {name} on " in output
        assert f"://127.0.0.1:{port}" in output
    stopped = ", ".join(f"{service.name}=0" for service in reversed(REGISTRY.start_order()))
    assert f"stopped (exit codes: {stopped})" in output


def test_dev_refuses_an_unknown_service_or_a_shared_port() -> None:
    for flags, message in (
        (["--port=nosuch=1234"], "expected NAME=PORT with NAME one of"),
        ([f"--port={name}=4321" for name in REGISTRY], "two services on port 4321"),
    ):
        dev = ChildProcess("dev", [runfile("tools/dev/dev"), *flags]).start()
        assert dev.wait(timeout=20) == 2
        dev.stop()
        assert message in "\n".join(dev.lines)


def prometheus_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result: list[dict] = answer["data"]["result"]
    return result


def test_dev_with_monitoring_runs_prometheus_scraping_every_service_and_leaves_nothing_behind() -> None:
    *service_ports, prometheus_port = free_ports(len(REGISTRY) + 1)
    ports = dict(zip(REGISTRY, service_ports, strict=True))
    dev = ChildProcess(
        "dev",
        [
            runfile("tools/dev/dev"),
            "--monitoring",
            f"--prometheus-port={prometheus_port}",
            *(f"--port={name}={port}" for name, port in ports.items()),
        ],
    ).start()
    try:
        dev.wait_for_port(prometheus_port, timeout=60)
        wait_until_ready(f"127.0.0.1:{prometheus_port}")
        for name in WEB:  # traffic for the services to count: each asks every service it calls for its health
            for _ in range(5):
                get_json(f"http://127.0.0.1:{ports[name]}/readyz")
        # Every service scraped and counted, the rules loaded: within a few scrapes (5 s apart).
        wanted = {f'sum(up{{job="{name}"}})': 1 for name in REGISTRY}
        for name in WEB:
            wanted[f'sum(http_requests_total{{job="{name}",route="/readyz",status="200"}})'] = 5
            for callee in REGISTRY.calls(name):
                checks = f'grpc_server_handled_total{{job="{callee}",grpc_method="Check",grpc_code="OK"}}'
                wanted[f"sum({checks}) >= bool {5 * len([w for w in WEB if callee in REGISTRY.calls(w)])}"] = 1
        deadline = time.monotonic() + 60
        while True:
            seen = {query: prometheus_query(prometheus_port, query) for query in wanted}
            values = {query: float(result[0]["value"][1]) if result else None for query, result in seen.items()}
            if values == {query: float(count) for query, count in wanted.items()}:
                break
            assert time.monotonic() < deadline, f"Prometheus never saw the traffic: {values}"
            time.sleep(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/api/v1/rules", timeout=10) as response:
            groups = {group["name"] for group in json.load(response)["data"]["groups"]}
        assert {"grpc-red", "http-red", "slo-budgets", "slo-ratios", "slo-alerts"} <= groups
        with urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/graph", timeout=10) as response:
            assert response.status == 200  # the UI
        dev.signal(signal.SIGINT)
        assert dev.stop(timeout=30) == 0
    finally:
        dev.stop()
    output = "\n".join(dev.lines)
    assert f"Prometheus on http://127.0.0.1:{prometheus_port}/" in output
    data = re.search(r"data in (\S+)\)", output)
    assert data, "the log does not say where Prometheus keeps its data"
    assert not Path(data.group(1)).exists(), "Prometheus' data outlived //:dev"
    assert "prometheus=0" in output
