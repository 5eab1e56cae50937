"""checkov itself on both rendered overlays: its Kubernetes framework, the release in
tools/checkov/requirements_lock.txt, with the network cut off (this test runs in Bazel's sandbox with
`block-network`, so a look-up checkov made would fail here, not quietly change the checks).

0 failed on both overlays. A check that cannot apply to this project is waived in WAIVERS, by ID with the
reason, and nowhere else; there is none today.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s.render import OVERLAYS, render
from libs.processes.processes import runfile

IMAGE_REGISTRY = "registry.test/books"
WAIVERS: dict[str, str] = {}  # check ID → why it does not apply here


def scan(manifests: str, scratch: Path) -> dict[str, Any]:
    """checkov's JSON report of a manifest file (its exit code says only whether anything failed)."""
    path = scratch / "manifests.yaml"
    path.write_text(manifests)
    skipped = ["--skip-check", ",".join(WAIVERS)] if WAIVERS else []
    result = subprocess.run(
        [str(runfile("tools/checkov/checkov")), "--file", str(path), "--framework", "kubernetes", "--output", "json"]
        + skipped,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@functools.cache
def rendered(overlay: str) -> str:
    return render(overlay, IMAGE_REGISTRY)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_finds_nothing_failed_in_the_overlay(overlay: str, tmp_path: Path) -> None:
    found = scan(rendered(overlay), tmp_path)
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in found["results"]["failed_checks"]]
    assert failed == [], "\n".join(failed)
    assert found["summary"]["parsing_errors"] == 0
    assert found["summary"]["passed"] >= 100  # its pod checks ran, not only a handful
    scanned = {check["resource"] for check in found["results"]["passed_checks"]}
    for deployment in (d for d in yaml.safe_load_all(rendered(overlay)) if d and d["kind"] == "Deployment"):
        assert f"Deployment.{deployment['metadata']['namespace']}.{deployment['metadata']['name']}" in scanned


def test_checkov_reports_a_planted_privileged_pod(tmp_path: Path) -> None:
    """Control: the same scan fails a Deployment made privileged, on the host's network, from a tag."""
    broken = next(d for d in yaml.safe_load_all(rendered("prod")) if d and d["kind"] == "Deployment")
    pod = broken["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["containers"][0]["securityContext"]["privileged"] = True
    pod["containers"][0]["image"] = pod["containers"][0]["image"].split("@")[0] + ":latest"
    failed = {check["check_id"] for check in scan(yaml.safe_dump(broken), tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_19", "CKV_K8S_43"} <= failed, failed
