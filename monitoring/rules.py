"""The Prometheus rules of every service in services/services.bzl, generated from its entry.

    ./bazelw build //monitoring:rules      # bazel-bin/monitoring/rules.yaml (//monitoring:rules.yaml)

RED recording rules per service (`job`) and method or route: request rate, error ratio by code class,
latency quantiles from the histograms. SLO rules per service, from its `slo` in the list (availability:
calls without a server-side error; latency: calls answered within its threshold), with alerts in the
multi-window, multi-burn-rate style of Google's SRE workbook (chapter 5): a page at 14.4x over 1 h (and
5 m) or 6x over 6 h (and 30 m); a ticket at 3x over 1 d (and 2 h) or 1x over 3 d (and 6 h). Each
service's budgets are series of their own (`job:slo_availability_budget:ratio`,
`job:slo_latency_budget:ratio`), so one alert rule serves every service and the dashboards divide by the
same numbers. Error ratios are 0, not absent, while a service answers without errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from services.registry import REGISTRY, Registry, Service

SERVER_ERROR_CODES = (
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "RESOURCE_EXHAUSTED",
)
"""The gRPC codes that count against a service's availability: the server failed, not the caller."""
CLIENT_ERROR_CODES = (
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
)
QUANTILES = ("0.5", "0.9", "0.99")
# Each alert: its severity, its clauses (long window, short window, burn-rate factor) and what its firing means.
Clause = tuple[str, str, float]
BURNS: dict[str, tuple[str, list[Clause], str]] = {
    "Fast": ("page", [("1h", "5m", 14.4), ("6h", "30m", 6)], "gone in 2 days or less"),
    "Slow": ("ticket", [("1d", "2h", 3), ("3d", "6h", 1)], "gone before the month is"),
}
WINDOWS = sorted(
    {window for _, clauses, _ in BURNS.values() for long, short, _ in clauses for window in (long, short)},
    key=lambda window: int(window[:-1]) * {"m": 1, "h": 60, "d": 1440}[window[-1]],
)
RUNBOOKS = {
    "availability": 'Look at job_grpc_method:grpc_server_errors:ratio_rate5m{code_class="server"} and '
    'job_route:http_requests_errors:ratio_rate5m{status_class="5xx"} for the method or route; the '
    "service's ERROR log lines carry the request id and the traceback; check its dependencies' health and "
    "recent rollouts (kubectl rollout history), and roll back if the errors started with one.",
    "latency": "Look at the latency quantiles by method or route "
    "(job_grpc_method:grpc_server_handling_seconds:quantile_rate5m); check CPU saturation "
    "(process_cpu_seconds_total against the pod's limit), calls in flight and load shedding "
    "(RESOURCE_EXHAUSTED); scale out (the HPA's maximum) or find the slow dependency in the traces.",
}


def _codes(codes: tuple[str, ...]) -> str:
    return "|".join(codes)


def _ratio(errors: str, total: str, by: str, window: str) -> str:
    """errors / total over `window`, summed by `by`: 0 rather than absent while there are no errors."""
    return (
        f"(sum by ({by}) (rate({errors}[{window}]))\n"
        f"  or 0 * sum by ({by}) (rate({total}[{window}])))\n"
        f"  / sum by ({by}) (rate({total}[{window}]))\n"
    )


def red_groups() -> list[dict[str, Any]]:
    method = "job, grpc_service, grpc_method"
    grpc: list[dict[str, Any]] = [
        {
            "record": "job_grpc_method:grpc_server_handled:rate5m",
            "expr": f"sum by ({method}) (rate(grpc_server_handled_total[5m]))",
        }
    ]
    for code_class, codes in (("server", SERVER_ERROR_CODES), ("client", CLIENT_ERROR_CODES)):
        errors = f'grpc_server_handled_total{{grpc_code=~"{_codes(codes)}"}}'
        grpc.append(
            {
                "record": "job_grpc_method:grpc_server_errors:ratio_rate5m",
                "expr": _ratio(errors, "grpc_server_handled_total", method, "5m"),
                "labels": {"code_class": code_class},
            }
        )
    http: list[dict[str, Any]] = [
        {
            "record": "job_method_route:http_requests:rate5m",
            "expr": "sum by (job, method, route) (rate(http_requests_total[5m]))",
        }
    ]
    for status_class in ("5xx", "4xx"):
        errors = f'http_requests_total{{status_class="{status_class}"}}'
        http.append(
            {
                "record": "job_route:http_requests_errors:ratio_rate5m",
                "expr": _ratio(errors, "http_requests_total", "job, route", "5m"),
                "labels": {"status_class": status_class},
            }
        )
    for rules, record, histogram, by in (
        (grpc, "job_grpc_method:grpc_server_handling_seconds:quantile_rate5m", "grpc_server_handling_seconds", method),
        (
            http,
            "job_route:http_request_duration_seconds:quantile_rate5m",
            "http_request_duration_seconds",
            "job, route",
        ),
    ):
        rules += [
            {
                "record": record,
                "expr": f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket[5m])))\n",
                "labels": {"quantile": q},
            }
            for q in QUANTILES
        ]
    return [{"name": "grpc-red", "rules": grpc}, {"name": "http-red", "rules": http}]


def _histogram(service: Service) -> str:
    return "grpc_server_handling_seconds" if service.kind == "grpc" else "http_request_duration_seconds"


def le_label(seconds: float) -> str:
    """A bucket's `le` as both our gRPC histograms and prometheus_client write it: 0.25 → "0.25", 1 → "1.0"."""
    return repr(float(seconds))


def slo_groups(registry: Registry) -> list[dict[str, Any]]:
    budgets: list[dict[str, Any]] = []
    for service in registry.values():
        for slo, budget in (("availability", service.slo.availability_budget), ("latency", service.slo.latency_budget)):
            budgets.append(
                {
                    "record": f"job:slo_{slo}_budget:ratio",
                    "expr": f"vector({budget:g})",
                    "labels": {"job": service.name},
                }
            )
    ratios: list[dict[str, Any]] = []
    for window in WINDOWS:
        server_errors = f'grpc_server_handled_total{{grpc_code=~"{_codes(SERVER_ERROR_CODES)}"}}'
        for protocol, errors, total in (
            ("grpc", server_errors, "grpc_server_handled_total"),
            ("http", 'http_requests_total{status_class="5xx"}', "http_requests_total"),
        ):
            ratios.append(
                {
                    "record": f"job:slo_availability_errors:ratio_rate{window}",
                    "expr": _ratio(errors, total, "job", window),
                    "labels": {"protocol": protocol},
                }
            )
        for service in registry.values():
            histogram, job = _histogram(service), f'job="{service.name}"'
            fast = f'{histogram}_bucket{{{job},le="{le_label(service.slo.latency_seconds)}"}}'
            ratios.append(
                {
                    "record": f"job:slo_latency_slow:ratio_rate{window}",
                    "expr": (
                        f"1 - sum by (job) (rate({fast}[{window}]))\n"
                        f"  / sum by (job) (rate({histogram}_count{{{job}}}[{window}]))\n"
                    ),
                    # job too: one rule per service, and promtool takes rules alike in name and labels
                    # for duplicates
                    "labels": {"protocol": service.kind, "job": service.name},
                }
            )
    alerts: list[dict[str, Any]] = []
    for slo, ratio, objective in (
        ("availability", "slo_availability_errors", "calls without a server-side error"),
        ("latency", "slo_latency_slow", "calls within the service's latency threshold"),
    ):
        for speed, (severity, clauses, meaning) in BURNS.items():
            budgets_of_jobs = f"job:slo_{slo}_budget:ratio"
            expr = "\nor\n".join(
                f"(job:{ratio}:ratio_rate{long} > on (job) group_left () ({factor:g} * {budgets_of_jobs})"
                f" and job:{ratio}:ratio_rate{short} > on (job) group_left () ({factor:g} * {budgets_of_jobs}))"
                for long, short, factor in clauses
            )
            rates = ", ".join(f"{long}/{short} above {factor:g}x" for long, short, factor in clauses)
            alerts.append(
                {
                    "alert": f"SLO{slo.capitalize()}BudgetBurn{speed}",
                    "expr": expr + "\n",
                    "for": "2m",
                    "labels": {"severity": severity, "slo": slo},
                    "annotations": {
                        "summary": f"{{{{ $labels.job }}}} is burning its {slo} error budget {speed.lower()}",
                        "description": (
                            f"Objective: the share of {objective} that services/services.bzl sets for the "
                            f"service (its budget: job:slo_{slo}_budget:ratio). Burn rates over {rates}: at this "
                            f"rate the month's error budget is {meaning}."
                        ),
                        "runbook": RUNBOOKS[slo],
                    },
                }
            )
    return [
        {"name": "slo-budgets", "rules": budgets},
        {"name": "slo-ratios", "rules": ratios},
        {"name": "slo-alerts", "rules": alerts},
    ]


def rules(registry: Registry = REGISTRY) -> dict[str, Any]:
    return {"groups": red_groups() + slo_groups(registry)}


class _Literal(str):
    """A multi-line string written as a YAML block (`|`), as a person would write PromQL."""


yaml.SafeDumper.add_representer(
    _Literal, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
)


def render(registry: Registry = REGISTRY) -> str:
    def blocks(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: blocks(item) for key, item in value.items()}
        if isinstance(value, list):
            return [blocks(item) for item in value]
        return _Literal(value) if isinstance(value, str) and "\n" in value else value

    header = "# Generated by monitoring/rules.py from services/services.bzl; do not edit.\n"
    return header + yaml.safe_dump(blocks(rules(registry)), sort_keys=False, width=1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the rules here (default: standard output)")
    args = parser.parse_args(argv)
    if args.out:
        args.out.write_text(render())
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
