"""The built image of every service in services/services.bzl runs under podman as the overlays run its
pods (read-only root, every capability dropped, no privilege escalation, the non-root uid, PROCESSES
serving processes under a supervisor that is pid 1): it answers on published loopback ports (a gRPC
service: SERVING, its API by reflection, its allow rules under mTLS, metrics), and exits cleanly on
SIGTERM; and all the images together on one host serve, each web service reaching the services it calls.
//tests/kube runs the rendered overlays themselves.

Needs podman with runc (`.ci/run` and `bazelw` install them on Debian), as root or rootless (subordinate
ids in /etc/subuid and /etc/subgid, newuidmap: the test is skipped naming what is missing). podman runs
with the flags this machine kind needs (tools/oci/podman.py); ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.processes.processes import free_ports, runfile
from libs.runtime.readiness import wait_until_serving
from services.registry import REGISTRY, Service
from tests.containers.running import (
    INTRUDER,
    NONROOT,
    check_allow_rules,
    check_runs_as_the_pod_spec_says,
    wait_for_http,
)
from tools.certs.certs import mint_all, mint_leaf, write_leaf
from tools.oci.podman import RUN, load, logs, podman, rootless_problem

SERVICES = list(REGISTRY)
PROCESSES = 2  # as in a prod pod: a supervisor (pid 1) and two serving children


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("podman and runc are needed (Debian: apt-get install podman runc; ./bazelw does this)")
    missing = rootless_problem()
    if missing:
        pytest.skip(missing)
    return {name: load(runfile(s.image_archive), runfile(s.image)) for name, s in REGISTRY.items()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Minted at test time, never in an image: each container mounts a directory of its own pair and the
    CA, its key readable only by the container's user (as a Secret would be); the test keeps the callers'."""
    out = tmp_path_factory.mktemp("certs")
    write_leaf(out, INTRUDER, mint_leaf(mint_all(out), INTRUDER))
    mounts = out / "mounts"
    for service in REGISTRY:
        mount = mounts / service
        mount.mkdir(parents=True)
        for name in (f"{service}.pem", f"{service}.key", "ca.pem"):
            shutil.copy(out / name, mount / name)
        mount.chmod(0o755)
        owned_by_container_user(mount / f"{service}.key")
    yield out
    if os.geteuid() != 0:  # the keys belong to the container's user now: remove them in its namespace
        podman("unshare", "rm", "-rf", str(mounts), check=False)


def owned_by_container_user(path: Path) -> None:
    """chown to the image's user: directly as root; rootless, inside podman's user namespace (where
    uid 65532 is the subordinate id the container's 65532 maps to)."""
    if os.geteuid() == 0:
        os.chown(path, NONROOT, NONROOT)
    else:
        podman("unshare", "chown", f"{NONROOT}:{NONROOT}", str(path))


@pytest.fixture
def cleanup() -> Iterator[list[list[str]]]:
    """podman commands that undo what a test made, run even when it fails midway."""
    undo: list[list[str]] = []
    yield undo
    for command in reversed(undo):
        podman(*command, check=False)


def mount(certs: Path, service: Service) -> str:
    return f"--volume={certs / 'mounts' / service.name}:/certs:ro"


def tls_env(service: Service) -> list[str]:
    return [
        f"--env={service.env_prefix}_TLS_CERT=/certs/{service.name}.pem",
        f"--env={service.env_prefix}_TLS_KEY=/certs/{service.name}.key",
        f"--env={service.env_prefix}_TLS_CA=/certs/ca.pem",
    ]


@pytest.mark.parametrize("name", SERVICES)
def test_image_runs_as_a_pod_would_serves_on_published_loopback_ports_and_stops_cleanly(
    name: str, images: dict[str, str], certs: Path, cleanup: list
) -> None:
    service = REGISTRY[name]
    published = dict(zip(service.ports.values(), free_ports(len(service.ports)), strict=True))
    container = f"obfy-{name}-{uuid.uuid4().hex[:8]}"
    cleanup.append(["rm", "--force", container])
    started = time.monotonic()
    podman(
        *RUN,
        f"--name={container}",
        *(f"--publish=127.0.0.1:{host}:{inside}" for inside, host in published.items()),
        mount(certs, service),
        *tls_env(service),
        f"--env={service.processes_variable}={PROCESSES}",
        images[name],
    )
    if service.kind == "grpc":
        wait_until_serving(f"127.0.0.1:{published[service.ports['health']]}")
        check_allow_rules(service, certs, f"127.0.0.1:{published[service.port]}")
        metrics = wait_for_http(f"http://127.0.0.1:{published[service.ports['metrics']]}/metrics").decode()
        assert f'grpc_service="{service.grpc_service}"' in metrics
        assert 'grpc_code="PERMISSION_DENIED"' in metrics or not service.allow
    else:
        wait_for_http(f"http://127.0.0.1:{published[service.port]}/healthz")
    print(f"{name}: podman run -> answering: {time.monotonic() - started:.2f} s")
    time.sleep(1)  # a child that took its parent (pid 1) for dead would have exited and been restarted by now
    check_runs_as_the_pod_spec_says(int(podman("inspect", "--format", "{{.State.Pid}}", container)), PROCESSES)
    written = logs(container)
    assert "supervising 2 processes" in written
    assert "restarting it" not in written, written

    podman("stop", "--time=30", container)  # SIGTERM to pid 1: every process drains, then exits
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", container)
    assert exit_code == "0", f"{name} exited {exit_code} on SIGTERM:\n{logs(container)[-4000:]}"
    assert podman("inspect", "--format", "{{.RestartCount}}", container) == "0"


def probe_port(service: Service) -> int:
    """Where a test reaches a service from outside: a gRPC service's health port, a web service's port."""
    return service.ports["health"] if service.kind == "grpc" else service.port


def test_every_image_together_serves_and_each_web_service_reaches_its_callees(
    images: dict[str, str], certs: Path, cleanup: list
) -> None:
    """The list's images in one network namespace, as //:dev runs the services on one host (each on its
    own ports): every gRPC service is SERVING, every web service serves its page and its /readyz reports
    each service it calls SERVING over mTLS, with its own certificate."""
    order = REGISTRY.start_order()  # callees first
    published = dict(zip([s.name for s in order], free_ports(len(order)), strict=True))
    suffix = uuid.uuid4().hex[:8]
    names = {service.name: f"obfy-{service.name}-{suffix}" for service in order}
    cleanup += [["rm", "--force", name] for name in names.values()]
    # podman's pods start an infra container that rejects the ulimits this machine needs: the first
    # container holds the network namespace and publishes every service's probe port.
    publish = [f"--publish=127.0.0.1:{published[s.name]}:{probe_port(s)}" for s in order]
    for index, service in enumerate(order):
        network = publish if index == 0 else [f"--network=container:{names[order[0].name]}"]
        callees = [
            f"--env={REGISTRY[c].env_prefix}_ADDR=localhost:{REGISTRY[c].port}" for c in REGISTRY.calls(service.name)
        ]
        podman(
            *RUN,
            f"--name={names[service.name]}",
            *network,
            mount(certs, service),
            *tls_env(service),
            *callees,
            images[service.name],
        )
    for service in order:
        if service.kind == "grpc":
            wait_until_serving(f"127.0.0.1:{published[service.name]}")
    for service in (s for s in order if s.kind == "http"):
        url = f"http://127.0.0.1:{published[service.name]}"
        wait_for_http(f"{url}/")
        ready = json.loads(wait_for_http(f"{url}/readyz"))
        assert ready == {"status": "ready", **{callee: "SERVING" for callee in REGISTRY.calls(service.name)}}
