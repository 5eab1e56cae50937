"""The generated monitoring rules under Prometheus' own tools: `promtool check rules` on the list's, and
`promtool test rules` with synthetic series for every alert, firing and not firing, on the rules of a list
of its own (a gRPC service and a web one, not the examples); every service of the real list has the
budgets of its `slo`, and its latency threshold is a bucket of its histogram."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import Histogram

from libs.interceptors.metrics import LATENCY_BUCKETS
from libs.processes.processes import runfile
from monitoring.dashboards import saturation_and_slo_queries
from monitoring.rules import le_label, render
from services.registry import REGISTRY, parse

PROMTOOL = "tools/monitoring/promtool"
RULES = "monitoring/rules.yaml"
# The services the alerts are tested on, with the default objectives: 0.1 % errors, 1 % slow.
SHOP_SERVICES = [
    {
        "name": "shop-api",
        "kind": "grpc",
        "ports": {"grpc": 50100, "health": 50101, "metrics": 50102},
        "description": "A gRPC service",
        "grpc_service": "shop.v1.Api",
    },
    {"name": "shop-web", "kind": "http", "ports": {"http": 50103}, "description": "A web service"},
    {  # a second one of a kind: its rules must not read as duplicates of the first's
        "name": "shop-search",
        "kind": "grpc",
        "ports": {"grpc": 50104, "health": 50105, "metrics": 50106},
        "description": "Another gRPC service",
        "grpc_service": "shop.v1.Search",
        "slo": {"latency_ms": 100},
    },
]
SHOP = parse(f"SERVICES = {SHOP_SERVICES!r}")
JOBS = {"grpc": "shop-api", "http": "shop-web"}
GRPC_SELECTOR = 'job="shop-api",grpc_service="shop.v1.Api",grpc_method="Get",grpc_type="unary"'
HTTP_SELECTOR = 'job="shop-web",method="GET",route="/items/{id}"'


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(runfile(PROMTOOL)), *args], capture_output=True, text=True, timeout=120)


def alert_rules(path: Path) -> dict[str, dict]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


@pytest.fixture(scope="module")
def shop_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "shop.yaml"
    path.write_text(render(SHOP))
    return path


def test_rules_pass_promtool_check(shop_rules: Path) -> None:
    for rules in (runfile(RULES), shop_rules):
        checked = promtool("check", "rules", str(rules))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS" in checked.stdout


@dataclass(frozen=True)
class Traffic:
    """Per minute: calls answered well, failed server-side, and slower than the latency objective."""

    ok: int
    failed: int = 0
    slow: int = 0


Phases = list[tuple[Traffic, int]]  # traffic, for so many minutes, one after the other


def counter(phases: Phases, per_minute: Callable[[Traffic], int], step: int) -> str:
    """promtool's expanding notation for a counter growing by `per_minute` through the phases, sampled
    every `step` minutes: "a+bxn" is the n+1 values a, a+b, ... a+nb."""
    segments, value = [], 0
    for index, (traffic, minutes) in enumerate(phases):
        increase = per_minute(traffic) * step
        samples = minutes // step
        if index == 0:
            segments.append(f"{value}+{increase}x{samples}")
        else:
            segments.append(f"{value + increase}+{increase}x{samples - 1}")
        value += increase * samples
    return " ".join(segments)


def fast_bucket(protocol: str) -> str:
    return le_label(SHOP[JOBS[protocol]].slo.latency_seconds)


def series(protocol: str, phases: Phases, step: int) -> list[dict[str, str]]:
    """The metrics SHOP's gRPC service or its web one would export."""

    def total(t: Traffic) -> int:
        return t.ok + t.failed

    if protocol == "grpc":
        names = {
            "ok": f'grpc_server_handled_total{{{GRPC_SELECTOR},grpc_code="OK"}}',
            "failed": f'grpc_server_handled_total{{{GRPC_SELECTOR},grpc_code="INTERNAL"}}',
            "fast": f'grpc_server_handling_seconds_bucket{{{GRPC_SELECTOR},le="{fast_bucket("grpc")}"}}',
            "count": f"grpc_server_handling_seconds_count{{{GRPC_SELECTOR}}}",
        }
    else:
        names = {
            "ok": f'http_requests_total{{{HTTP_SELECTOR},status="200",status_class="2xx"}}',
            "failed": f'http_requests_total{{{HTTP_SELECTOR},status="503",status_class="5xx"}}',
            "fast": f'http_request_duration_seconds_bucket{{{HTTP_SELECTOR},le="{fast_bucket("http")}"}}',
            "count": f"http_request_duration_seconds_count{{{HTTP_SELECTOR}}}",
        }
    per_minute: dict[str, Callable[[Traffic], int]] = {
        "ok": lambda t: t.ok,
        "failed": lambda t: t.failed,
        "fast": lambda t: total(t) - t.slow,
        "count": total,
    }
    return [{"series": name, "values": counter(phases, per_minute[key], step)} for key, name in names.items()]


CLEAN = Traffic(ok=1000)
HOUR, DAY = 60, 24 * 60
# (alert, traffic phases, whether the alert fires at their end). Objectives: 0.1 % errors, 1 % slow.
# Each burn-rate clause is shown firing on its own (the other clause of the alert stays below its rate).
SCENARIOS = [
    # 1 h and 5 m above 14.4 x 0.1 %, after 6 clean hours (so 6 h stays below 6x): a page.
    ("SLOAvailabilityBudgetBurnFast", [(CLEAN, 6 * HOUR), (Traffic(ok=980, failed=20), 65)], True),
    # 6 h and 30 m above 6x, 1 h below 14.4x: a page.
    ("SLOAvailabilityBudgetBurnFast", [(Traffic(ok=992, failed=8), 7 * HOUR)], True),
    # 0.5 % for 70 minutes: above the slow burn rates, below both fast ones.
    ("SLOAvailabilityBudgetBurnFast", [(Traffic(ok=995, failed=5), 70)], False),
    # 1 d and 2 h above 3x: a ticket.
    ("SLOAvailabilityBudgetBurnSlow", [(Traffic(ok=995, failed=5), 26 * HOUR)], True),
    # 3 d and 6 h above 1x, 1 d below 3x: a ticket.
    ("SLOAvailabilityBudgetBurnSlow", [(Traffic(ok=998, failed=2), 3 * DAY)], True),
    ("SLOAvailabilityBudgetBurnSlow", [(Traffic(ok=9995, failed=5), 26 * HOUR)], False),  # 0.05 %
    ("SLOLatencyBudgetBurnFast", [(CLEAN, 6 * HOUR), (Traffic(ok=1000, slow=200), 65)], True),  # 1 h clause
    ("SLOLatencyBudgetBurnFast", [(Traffic(ok=1000, slow=80), 7 * HOUR)], True),  # 6 h clause
    ("SLOLatencyBudgetBurnFast", [(Traffic(ok=1000, slow=40), 70)], False),  # 4 %: a ticket, not a page
    ("SLOLatencyBudgetBurnSlow", [(Traffic(ok=1000, slow=40), 26 * HOUR)], True),  # 1 d clause
    ("SLOLatencyBudgetBurnSlow", [(Traffic(ok=1000, slow=20), 3 * DAY)], True),  # 3 d clause
    ("SLOLatencyBudgetBurnSlow", [(Traffic(ok=1000, slow=5), 26 * HOUR)], False),  # 0.5 % slow
]


def expected_alert(rule: dict, job: str, protocol: str) -> dict:
    annotations = dict(rule["annotations"])
    annotations["summary"] = annotations["summary"].replace("{{ $labels.job }}", job)
    return {"exp_labels": {**rule["labels"], "job": job, "protocol": protocol}, "exp_annotations": annotations}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize(("alert", "phases", "fires"), SCENARIOS)
def test_alert(alert: str, phases: Phases, fires: bool, protocol: str, shop_rules: Path, tmp_path: Path) -> None:
    job = JOBS[protocol]
    minutes = sum(length for _, length in phases)
    step = 5 if minutes > 3 * HOUR else 1  # days of data: a sample and an evaluation every 5 minutes suffice
    rule = alert_rules(shop_rules)[alert]
    tests = {
        "rule_files": [str(shop_rules)],
        "evaluation_interval": f"{step}m",
        "tests": [
            {
                "interval": f"{step}m",
                "input_series": series(protocol, phases, step),
                "alert_rule_test": [
                    {
                        "eval_time": f"{minutes}m",
                        "alertname": alert,
                        "exp_alerts": [expected_alert(rule, job, protocol)] if fires else [],
                    }
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    tested = promtool("test", "rules", str(tmp_path / "test.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def expect(record: str, labels: str, value: float, at: str = "30m") -> dict:
    """A promql_expr_test: the series `record{labels}` (all of its labels) has `value` at `at`."""
    series = f"{record}{{{labels}}}"
    return {"expr": series, "eval_time": at, "exp_samples": [{"labels": series, "value": value}]}


def test_recording_rules_give_rates_and_error_ratios(shop_rules: Path, tmp_path: Path) -> None:
    traffic = Traffic(ok=980, failed=20, slow=500)  # per minute (half slow: 1 - 0.5 is exact in floating point)
    method = 'job="shop-api",grpc_service="shop.v1.Api",grpc_method="Get"'
    tests = {
        "rule_files": [str(shop_rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series("grpc", [(traffic, 30)], 1),
                "promql_expr_test": [
                    expect("job_grpc_method:grpc_server_handled:rate5m", method, 1000 / 60),
                    expect("job_grpc_method:grpc_server_errors:ratio_rate5m", f'{method},code_class="server"', 0.02),
                    expect("job_grpc_method:grpc_server_errors:ratio_rate5m", f'{method},code_class="client"', 0),
                    expect("job:slo_availability_errors:ratio_rate1h", 'job="shop-api",protocol="grpc"', 0.02),
                    expect("job:slo_latency_slow:ratio_rate1h", 'job="shop-api",protocol="grpc"', 0.5),
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    tested = promtool("test", "rules", str(tmp_path / "test.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_service_has_the_budgets_of_its_slo(tmp_path: Path) -> None:
    budgets = [
        expect(f"job:slo_{slo}_budget:ratio", f'job="{service.name}"', budget, at="1m")
        for service in REGISTRY.values()
        for slo, budget in (("availability", service.slo.availability_budget), ("latency", service.slo.latency_budget))
    ]
    tests = {
        "rule_files": [str(runfile(RULES))],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [], "promql_expr_test": budgets}],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    tested = promtool("test", "rules", str(tmp_path / "test.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_latency_threshold_is_a_bucket_of_the_services_histogram() -> None:
    """Otherwise the `le` the rules ask for is a series no service exports, and the latency SLO reads 100 % slow."""
    buckets = {"grpc": LATENCY_BUCKETS, "http": Histogram.DEFAULT_BUCKETS}
    for service in REGISTRY.values():
        labels = {le_label(bound) for bound in buckets[service.kind]}
        assert le_label(service.slo.latency_seconds) in labels, (service.name, service.slo.latency_ms)


def test_dashboards_burn_the_budgets_the_alerts_burn() -> None:
    """The dashboards divide error ratios by the budget series the alerts multiply."""
    alerts = alert_rules(runfile(RULES))
    for service in REGISTRY.values():
        queries = [query for _, panel in saturation_and_slo_queries(service).items() for _, query in panel]
        for slo in ("availability", "latency"):
            budget = f"job:slo_{slo}_budget:ratio"
            assert all(
                budget in alerts[f"SLO{slo.capitalize()}BudgetBurn{speed}"]["expr"] for speed in ("Fast", "Slow")
            )
            assert any(f'{budget}{{job="{service.name}"}}' in query for query in queries)
