"""A Prometheus of our own on loopback: for `./bazelw run //:dev -- --monitoring` and the tests that query
real metrics. It scrapes the given targets, evaluates monitoring/rules.yaml, and serves its UI (Debian's
classic one, //tools/monitoring:prometheus_web) and API on `listen`."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from libs.processes.processes import runfile

PROMETHEUS = "tools/monitoring/prometheus"
ALERTMANAGER = "tools/monitoring/alertmanager"
ALERTMANAGER_FILES = "tools/monitoring/alertmanager_files"
WEB = "tools/monitoring/prometheus_web"
RULES = "monitoring/rules.yaml"


def wait_until_ready(address: str, timeout: float = 60) -> None:
    """Waits for a Prometheus or Alertmanager on `address` (host:port) to say it is ready: listening is not
    ready, both answer 503 until they have loaded their storage and configuration."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/-/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, or 503 while starting (HTTPError is an OSError)
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{address} not ready within {timeout:.0f}s")
        time.sleep(0.5)


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
    monitoring/rules.yaml. `alertmanagers`: host:port of the Alertmanagers to send alerts to."""
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


def alertmanager_command(directory: Path, listen: str) -> list[str]:
    """An Alertmanager on its own (no cluster), every alert to one receiver that sends nothing: its API
    (/api/v2/alerts) shows what Prometheus sent. Configuration and state go into `directory`. Needs
    unprivileged user namespaces (as the system tests do)."""
    config = {
        "route": {"receiver": "nobody", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "nobody"}],
    }
    (directory / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    # Debian's Alertmanager reads its templates from /usr/share/prometheus/alertmanager, a path compiled in.
    # Nothing is installed: in a user and mount namespace of its own (no root needed), the files of its
    # package are laid over /usr/share (a read-only overlay), and only it sees them.
    overlay = 'mount -t overlay overlay -o "lowerdir=$0/usr/share:/usr/share" /usr/share && exec "$@"'
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        overlay,
        str(runfile(ALERTMANAGER_FILES)),
        str(runfile(ALERTMANAGER)),
        f"--config.file={directory / 'alertmanager.yml'}",
        f"--storage.path={directory / 'alertmanager'}",
        f"--web.listen-address={listen}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
