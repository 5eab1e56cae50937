"""One Grafana dashboard per service of services/services.bzl: RED, saturation and SLO burn.

    ./bazelw run //monitoring:dashboards -- --out DIR     # writes DIR/<service>.json

Rows: requests per second by method (gRPC) or route (HTTP); error ratio by code class; latency
quantiles (p50, p90, p99); saturation: calls in flight, CPU (cores) and resident memory, summed over
the service's processes; and the burn rate of both SLO budgets over the alert windows (1 at the objective;
a page at 14.4 over 1 h). Every query reads the recording rules of monitoring/rules.py or the
services' own metrics, with `job` set to the service; //tests/integration:monitoring_test runs every one
against a Prometheus that scraped real traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from services.registry import REGISTRY, Service


def red_queries(service: Service) -> dict[str, list[tuple[str, str]]]:
    """Panel title → (legend, PromQL) of the RED rows."""
    job = f'job="{service.name}"'
    if service.kind == "grpc":
        return {
            "Requests per second by method": [
                ("{{grpc_method}}", f"job_grpc_method:grpc_server_handled:rate5m{{{job}}}"),
            ],
            "Error ratio by code class": [
                ("{{grpc_method}} {{code_class}}", f"job_grpc_method:grpc_server_errors:ratio_rate5m{{{job}}}"),
            ],
            "Latency": [
                (
                    "{{grpc_method}} p{{quantile}}",
                    f"job_grpc_method:grpc_server_handling_seconds:quantile_rate5m{{{job}}}",
                ),
            ],
            "Calls in flight": [("in flight", f"sum(grpc_server_in_flight{{{job}}})")],
        }
    return {
        "Requests per second by route": [("{{method}} {{route}}", f"job_method_route:http_requests:rate5m{{{job}}}")],
        "Error ratio by status class": [
            ("{{route}} {{status_class}}", f"job_route:http_requests_errors:ratio_rate5m{{{job}}}"),
        ],
        "Latency": [("{{route}} p{{quantile}}", f"job_route:http_request_duration_seconds:quantile_rate5m{{{job}}}")],
        "Requests in flight": [("in flight", f"sum(http_requests_in_flight{{{job}}})")],
    }


def saturation_and_slo_queries(service: Service) -> dict[str, list[tuple[str, str]]]:
    job = f'job="{service.name}"'
    # Divided by the budgets the alerts multiply (monitoring/rules.py: series of the service's `slo`).
    burn = {
        window: [
            (slo, f"job:{ratio}:ratio_rate{window}{{{job}}} / on (job) job:slo_{slo}_budget:ratio{{{job}}}")
            for slo, ratio in (("availability", "slo_availability_errors"), ("latency", "slo_latency_slow"))
        ]
        for window in ("1h", "6h", "1d")
    }
    return {
        "CPU (cores)": [("cpu", f"sum(rate(process_cpu_seconds_total{{{job}}}[5m]))")],
        "Resident memory": [("memory", f"sum(process_resident_memory_bytes{{{job}}})")],
        **{f"SLO burn rate over {window}": queries for window, queries in burn.items()},
    }


def queries(service: Service) -> list[str]:
    """Every PromQL expression of `service`'s dashboard."""
    panels = {**red_queries(service), **saturation_and_slo_queries(service)}
    return [query for targets in panels.values() for _, query in targets]


def dashboard(service: Service) -> dict:
    panels = {**red_queries(service), **saturation_and_slo_queries(service)}
    units = {
        "Latency": "s",
        "Resident memory": "bytes",
        "Error ratio by code class": "percentunit",
        "Error ratio by status class": "percentunit",
    }
    return {
        "title": f"{service.name}: RED, saturation, SLO burn",
        "uid": f"online-books-{service.name}",
        "tags": ["online-books"],
        "timezone": "utc",
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "schemaVersion": 39,
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": [
            {
                "id": index + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"x": (index % 2) * 12, "y": (index // 2) * 8, "w": 12, "h": 8},
                "fieldConfig": {"defaults": {"unit": units.get(title, "short")}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + number), "expr": query, "legendFormat": legend}
                    for number, (legend, query) in enumerate(targets)
                ],
            }
            for index, (title, targets) in enumerate(panels.items())
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for <service>.json (relative: to the workspace)"
    )
    args = parser.parse_args(argv)
    out = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")) / args.out
    out.mkdir(parents=True, exist_ok=True)
    for service in REGISTRY.values():
        (out / f"{service.name}.json").write_text(json.dumps(dashboard(service), indent=2) + "\n")
        print(out / f"{service.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
