"""A Prometheus of our own on loopback: for `./bazelw run //:dev -- --monitoring` and the tests that query
real metrics. It scrapes the given targets, evaluates monitoring/rules.yaml, and serves its UI (Debian's
classic one, //tools/monitoring:prometheus_web) and API on `listen`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from libs.processes.processes import runfile

PROMETHEUS = "tools/monitoring/prometheus"
WEB = "tools/monitoring/prometheus_web"
RULES = "monitoring/rules.yaml"


def prometheus_command(
    directory: Path,
    targets: Mapping[str, Sequence[str]],
    listen: str,
    *,
    interval: str = "5s",
    rules: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
) -> list[str]:
    """Writes the configuration into `directory` (the database goes there too) and returns the command.
    `targets`: job (service name) → host:port addresses serving /metrics. `rules`: default
    monitoring/rules.yaml."""
    config: dict = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rules or [runfile(RULES)]],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]} for job, addresses in targets.items()
        ],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return [
        str(runfile(PROMETHEUS)),
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address={listen}",
        f"--web.local-assets={runfile(WEB) / 'usr/share/prometheus/web'}/",
        "--log.level=warn",
    ]
