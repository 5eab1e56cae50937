"""Monitoring against real traffic: every service of the list, a real Prometheus scraping them with
monitoring/rules.yaml and a real Alertmanager (Debian's, //tools/monitoring), all on loopback.

A known mix of calls to a gRPC service of the list (grpc.health.v1 Check, which every one serves: 900 OK,
100 NOT_FOUND) comes back from PromQL as that count and that error ratio, and the histogram's median lies in
the bucket that holds the median the access log measured. Then a gRPC service that a web service calls goes
away, the web service's JSON API answers 503, and the availability alert (its windows shortened from hours
to seconds for the test) fires in Alertmanager; the service comes back, and the alert resolves. Every
dashboard of every service in the list (a generated one too) answers from traffic that every method of
every service gets, with requests made from its descriptors.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import statistics
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.http.grpc_json import unary_methods
from libs.processes.processes import ChildProcess, free_ports, runfile
from libs.runtime.reflection_client import ReflectionClient
from monitoring.dashboards import queries
from monitoring.rules import CLIENT_ERROR_CODES
from services.registry import REGISTRY, Service
from tools.monitoring.local import RULES, alertmanager_command, prometheus_command, wait_until_ready

GRPC = [service.name for service in REGISTRY.start_order() if service.kind == "grpc"]
MIXED = GRPC[0] if GRPC else ""  # the gRPC service the known mix is sent to
# A web service and a gRPC service it calls, for the alert: the callee goes away. Not a gateway: it serves
# its callees' HTTP bindings, not /api/<service>/<method>.
CALLED = next(
    (
        (web, callee)
        for web in REGISTRY
        for callee in REGISTRY.calls(web)
        if REGISTRY[web].kind == "http" and not REGISTRY[web].gateway
    ),
    None,
)

# The SLO windows of monitoring/rules.yaml, in seconds instead of minutes, hours and days; `for` likewise.
SHORTER = {"5m": "4s", "30m": "8s", "1h": "8s", "2h": "15s", "6h": "15s", "1d": "20s", "3d": "20s"}


def shortened_rules(path: Path) -> Path:
    groups = yaml.safe_load(runfile(RULES).read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            if group["name"] == "slo-ratios":
                rule["expr"] = re.sub(r"\[(\w+)\]", lambda m: f"[{SHORTER[m.group(1)]}]", rule["expr"])
            if "alert" in rule:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@dataclass
class Bed:
    ports: dict[str, int]
    directory: Path
    processes: dict[str, ChildProcess] = field(default_factory=dict)
    check_ms: list[float] = field(default_factory=list)  # health Checks, from the access log of MIXED

    def start(self, name: str, argv: list, port: int, on_line: Callable[[str], None] | None = None) -> None:
        self.processes[name] = ChildProcess(name, argv, on_line=on_line).start()
        self.processes[name].wait_for_port(port, timeout=60)

    def start_service(self, service: Service) -> None:
        """`service` as //:dev runs it, on the bed's ports, told where its callees listen."""
        argv = [runfile(service.binary), "--insecure", "--host=127.0.0.1", f"--port={self.ports[service.name]}"]
        argv.append("--drain-seconds=0")
        for callee in REGISTRY.calls(service.name):
            argv.append(f"{REGISTRY[callee].address_flag()}=127.0.0.1:{self.ports[callee]}")
            argv.append(f"--{callee}-timeout=1")  # a loaded CI machine is slower than the default budget
        if service.kind == "grpc":
            argv.append(f"--metrics-port={self.ports[service.name + '-metrics']}")
        on_line = None
        if service.name == MIXED:  # the known mix compares the histogram with the access log
            argv.append("--access-log-interval=0.01")
            on_line = self.keep_duration
        if service.kind == "http":
            argv.append("--no-access-log")
        self.start(service.name, argv, self.ports[service.name], on_line=on_line)

    def metrics_targets(self) -> dict[str, list[str]]:
        """Where Prometheus scrapes each service: a gRPC one's metrics port, an HTTP one's own port."""
        return {
            service.name: [f"127.0.0.1:{self.ports.get(service.name + '-metrics', self.ports[service.name])}"]
            for service in REGISTRY.values()
        }

    def keep_duration(self, line: str) -> None:
        if '"method":"/grpc.health.v1.Health/Check"' in line:
            self.check_ms.append(json.loads(line)["duration_ms"])

    def query(self, promql: str) -> list[dict]:
        query = urllib.parse.urlencode({"query": promql})
        answer = get_json(f"http://127.0.0.1:{self.ports['prometheus']}/api/v1/query?{query}")
        assert isinstance(answer, dict), answer
        assert answer["status"] == "success", answer
        result: list[dict] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict]:
        answer = get_json(f"http://127.0.0.1:{self.ports['alertmanager']}/api/v2/alerts")
        assert isinstance(answer, list)
        return [alert for alert in answer if alert["labels"].get("alertname") == name]


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.5)


def user_namespaces_refused() -> str:
    """Why Alertmanager cannot run here (it needs a user and mount namespace: tools/monitoring/local.py)."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode == 0:
        return ""
    return (
        "Alertmanager needs unprivileged user namespaces for `unshare --user --map-root-user --mount` "
        f"(sysctl kernel.unprivileged_userns_clone=1 where it exists); here: {probe.stderr.strip()}"
    )


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    if reason := user_namespaces_refused():
        pytest.skip(reason)
    names = [*REGISTRY, *(f"{s.name}-metrics" for s in REGISTRY.values() if s.kind == "grpc")]
    names += ["prometheus", "alertmanager"]
    bed = Bed(dict(zip(names, free_ports(len(names)), strict=True)), tmp_path)
    try:
        (tmp_path / "alertmanager").mkdir()
        listen = f"127.0.0.1:{bed.ports['alertmanager']}"
        bed.start("alertmanager", alertmanager_command(tmp_path / "alertmanager", listen), bed.ports["alertmanager"])
        for service in REGISTRY.start_order():
            bed.start_service(service)
        targets = bed.metrics_targets()
        (tmp_path / "prometheus").mkdir()
        command = prometheus_command(
            tmp_path / "prometheus",
            targets,
            f"127.0.0.1:{bed.ports['prometheus']}",
            interval="1s",
            rules=[shortened_rules(tmp_path / "rules.yaml")],
            alertmanagers=[listen],
        )
        bed.start("prometheus", command, bed.ports["prometheus"])
        for name in ("alertmanager", "prometheus"):
            wait_until_ready(f"127.0.0.1:{bed.ports[name]}")
        # Prometheus applies its targets a few seconds after it starts: wait until it has scraped them all.
        wait_for("every target scraped", lambda: bed.value("sum(up)") == len(targets), 60)
        yield bed
    finally:
        for process in reversed(bed.processes.values()):
            process.stop()


@pytest.mark.skipif(not MIXED, reason="the list has no gRPC service")
def test_a_known_mix_of_calls_comes_back_from_promql(bed: Bed) -> None:
    good = health_pb2.HealthCheckRequest(service="")  # the server as a whole: SERVING
    bad = health_pb2.HealthCheckRequest(service="no.such.Service")  # NOT_FOUND, the caller's fault
    codes: dict[str, int] = {}
    with grpc.insecure_channel(f"127.0.0.1:{bed.ports[MIXED]}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for index in range(1000):  # every tenth call for an unknown service: 900 OK, 100 NOT_FOUND
            try:
                stub.Check(bad if index % 10 == 9 else good, timeout=10)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as error:
                codes[error.code().name] = codes.get(error.code().name, 0) + 1
            # Spread over a few seconds of 1 s scrapes, so that rates see the counters grow.
            time.sleep(0.004)
    assert codes == {"OK": 900, "NOT_FOUND": 100}

    series = f'job="{MIXED}",grpc_service="grpc.health.v1.Health",grpc_method="Check"'
    calls = f"sum(grpc_server_handled_total{{{series}}})"
    wait_for("Prometheus scraping all 1,000 calls", lambda: bed.value(calls) == 1000, 30)
    refused = f'sum(grpc_server_handled_total{{{series},grpc_code="NOT_FOUND"}})'
    assert bed.value(refused) == 100
    assert bed.value(f"{refused} / {calls}") == pytest.approx(0.1)
    # The recording rule of the client error ratio (over 5 minutes: every call of the mix is in it).
    ratio = f'job_grpc_method:grpc_server_errors:ratio_rate5m{{job="{MIXED}",grpc_method="Check",code_class="client"}}'
    # Evaluated every second: NaN (0/0) until two scrapes of the counters have seen them grow.
    wait_for("the recording rule", lambda: not math.isnan(bed.value(ratio) or math.nan), 30)
    assert bed.value(ratio) == pytest.approx(0.1, abs=0.01)

    # The median from the histogram lies in the bucket that holds the median the access log measured.
    wait_for("every access line", lambda: len(bed.check_ms) >= 1000, 30)
    measured = statistics.median(bed.check_ms) / 1000
    buckets = f"grpc_server_handling_seconds_bucket{{{series}}}"
    bounds = sorted(float(series["metric"]["le"]) for series in bed.query(buckets))
    upper = next(bound for bound in bounds if measured <= bound)
    lower = max([0.0, *(bound for bound in bounds if bound < upper)])
    median = bed.value(f"histogram_quantile(0.5, sum by (le) ({buckets}))")
    assert median is not None
    assert lower <= median <= upper, f"PromQL's median {median} s, measured {measured} s in ({lower}, {upper}]"


@pytest.mark.skipif(CALLED is None, reason="no web service of the list calls a gRPC service")
def test_availability_alert_fires_in_alertmanager_and_resolves(bed: Bed) -> None:
    assert CALLED is not None
    web, callee = CALLED
    importlib.import_module(REGISTRY[callee].proto_module)
    method = next(iter(unary_methods(REGISTRY[callee].grpc_service)))
    api = f"http://127.0.0.1:{bed.ports[web]}/api/{callee}/{method}"
    alert = "SLOAvailabilityBudgetBurnFast"

    def status() -> int:
        try:
            with urllib.request.urlopen(api, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    def answers(server_error: bool, until: Callable[[], bool], seconds: float) -> None:
        """Calls the API (at most 20 a second, for at most `seconds`) until `until()`: each answered 503 if
        `server_error`, else without a server error (an empty request may be the caller's fault: a 4xx)."""
        deadline = time.monotonic() + seconds
        while not until():
            assert time.monotonic() < deadline, f"{alert}: not as expected within {seconds:.0f}s"
            assert (status() == 503) if server_error else (status() < 500)
            time.sleep(0.05)

    firing = lambda: [a for a in bed.alerts(alert) if a["labels"].get("job") == web]  # noqa: E731
    answers(False, lambda: (bed.value(f'sum(http_requests_total{{job="{web}"}})') or 0) > 0, 30)
    assert firing() == []
    bed.processes.pop(callee).stop()  # the callee goes away: the API answers 503
    answers(True, lambda: bool(firing()), 90)
    (alerted,) = firing()
    assert alerted["status"]["state"] == "active"
    assert alerted["labels"]["severity"] == "page"
    assert "runbook" in alerted["annotations"]

    bed.start_service(REGISTRY[callee])  # back on the same port: the web service reconnects (within its backoff)
    wait_for(f"{web} reaching {callee} again", lambda: status() < 500, 30)
    answers(False, lambda: not firing(), 120)


def test_every_dashboard_query_answers_from_real_traffic(bed: Bed) -> None:
    channels = {
        service.name: grpc.insecure_channel(f"127.0.0.1:{bed.ports[service.name]}")
        for service in REGISTRY.values()
        if service.kind == "grpc"
    }
    calls = [
        (ReflectionClient(channels[service.name]), service.grpc_service, method)
        for service in REGISTRY.values()
        if service.kind == "grpc"
        for method in ReflectionClient(channels[service.name]).methods(service.grpc_service)
    ]
    pages = [f"http://127.0.0.1:{bed.ports[s.name]}/" for s in REGISTRY.values() if s.kind == "http"]
    refused: set[tuple[str, str]] = set()
    try:
        for index in range(300):  # a few seconds of calls and pages, across several 1 s scrapes
            client, service_name, method = calls[index % len(calls)]
            try:
                client.call(service_name, method, client.sample_request(service_name, method), timeout=10)
            except grpc.RpcError as error:  # the caller's fault is traffic too; anything else is a failure
                refused.add((method, error.code().name))
            for page in pages:
                with urllib.request.urlopen(page, timeout=10):
                    pass
            time.sleep(0.01)
    finally:
        for channel in channels.values():
            channel.close()
    # A plausible request a service cannot serve (no such id, say) is the caller's fault, as the rules count it.
    assert not {(method, code) for method, code in refused if code not in CLIENT_ERROR_CODES}, refused
    expressions = {service.name: queries(service) for service in REGISTRY.values()}
    assert sum(map(len, expressions.values())) >= 2 * 10

    def answered() -> dict[str, list[str]]:
        return {name: [q for q in exprs if not bed.query(q)] for name, exprs in expressions.items()}

    # A query error fails at once (bed.query asserts success); an empty result may only be waiting for the
    # next rule evaluation.
    wait_for("every dashboard query to have a result", lambda: not any(answered().values()), 30)
