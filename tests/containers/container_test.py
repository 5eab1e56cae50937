"""The built image of every service in services/services.bzl runs under podman: it answers on published
loopback ports (a gRPC service: SERVING, its API by reflection, its allow rules under mTLS, metrics), runs
as the non-root uid on a read-only root file system and exits cleanly on SIGTERM; and the bookstore's two
images together serve the page.

Needs root and podman with runc (`.ci/run` and `bazelw` install them on Debian). podman runs with the
flags this machine kind needs (tools/oci/podman.py); ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from libs.processes.processes import free_port, runfile
from libs.runtime.readiness import wait_until_serving
from libs.runtime.reflection_client import ReflectionClient
from libs.runtime.tls import TlsFiles, channel_credentials
from services.registry import REGISTRY, Service
from tools.certs.certs import mint_all, mint_leaf, write_leaf
from tools.oci.oci import read_layout
from tools.oci.podman import RUN, load, podman

NONROOT = 65532
SERVICES = list(REGISTRY)
INTRUDER = "intruder"  # a certificate from our CA whose name no `allow` lists


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("podman and runc are needed (Debian: apt-get install podman runc; ./bazelw does this)")
    if os.geteuid() != 0:
        pytest.fail("the container tests run podman as root")
    return {name: load(runfile(f"{s.image}.tar"), runfile(s.image)) for name, s in REGISTRY.items()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Minted at test time and mounted read-only: no key is ever in an image."""
    out = tmp_path_factory.mktemp("certs")
    write_leaf(out, INTRUDER, mint_leaf(mint_all(out), INTRUDER))
    out.chmod(0o755)
    for key in out.glob("*.key"):
        os.chown(key, NONROOT, NONROOT)  # readable by the container's user only, as a Secret would be
    return out


@pytest.fixture
def cleanup() -> Iterator[list[list[str]]]:
    """podman commands that undo what a test made, run even when it fails midway."""
    undo: list[list[str]] = []
    yield undo
    for command in reversed(undo):
        podman(*command, check=False)


def tls_env(service: Service) -> list[str]:
    return [
        f"--env={service.env_prefix}_TLS_CERT=/certs/{service.name}.pem",
        f"--env={service.env_prefix}_TLS_KEY=/certs/{service.name}.key",
        f"--env={service.env_prefix}_TLS_CA=/certs/ca.pem",
    ]


def reflection_client(certs: Path, identity: str, port: int) -> tuple[grpc.Channel, ReflectionClient]:
    files = TlsFiles(certs / f"{identity}.pem", certs / f"{identity}.key", certs / "ca.pem")
    channel = grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(files))
    return channel, ReflectionClient(channel)


def wait_for_http(url: str, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def check_grpc_image(service: Service, certs: Path, published: dict[int, int]) -> None:
    """Over the published ports: SERVING, its API by reflection, its allow rules under mTLS, its metrics."""
    wait_until_serving(f"127.0.0.1:{published[service.ports['health']]}")
    port = published[service.port]
    for method, callers in service.allow.items():
        for identity in [*callers, INTRUDER]:
            channel, client = reflection_client(certs, identity, port)
            with channel:
                assert service.grpc_service in client.services()
                # An empty request: the handler may refuse it, but only the allowlist may say PERMISSION_DENIED.
                empty = [{}] if client.method(service.grpc_service, method).client_streaming else {}
                try:
                    client.call(service.grpc_service, method, empty)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()
            assert (code == grpc.StatusCode.PERMISSION_DENIED) == (identity == INTRUDER), (method, identity, code)
    metrics = wait_for_http(f"http://127.0.0.1:{published[service.ports['metrics']]}/metrics").decode()
    assert f'grpc_service="{service.grpc_service}"' in metrics
    assert 'grpc_code="PERMISSION_DENIED"' in metrics or not service.allow


@pytest.mark.parametrize("name", SERVICES)
def test_image_runs_as_nonroot_serves_on_published_loopback_ports_and_stops_cleanly(
    name: str, images: dict[str, str], certs: Path, cleanup: list
) -> None:
    service = REGISTRY[name]
    published = {port: free_port() for port in service.ports.values()}
    container = f"obfy-{name}-{uuid.uuid4().hex[:8]}"
    cleanup.append(["rm", "--force", container])
    started = time.monotonic()
    podman(
        *RUN,
        f"--name={container}",
        *(f"--publish=127.0.0.1:{host}:{inside}" for inside, host in published.items()),
        f"--volume={certs}:/certs:ro",
        *tls_env(service),
        images[name],
    )
    if service.kind == "grpc":
        check_grpc_image(service, certs, published)
    else:
        wait_for_http(f"http://127.0.0.1:{published[service.port]}/healthz")
    print(f"{name}: podman run -> answering: {time.monotonic() - started:.2f} s")

    pid = podman("inspect", "--format", "{{.State.Pid}}", container)
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
    assert uid_line.split()[1:] == [str(NONROOT)] * 4, uid_line
    assert gid_line.split()[1:] == [str(NONROOT)] * 4, gid_line

    podman("stop", "--time=30", container)  # SIGTERM: drain, then exit
    assert podman("inspect", "--format", "{{.State.ExitCode}}", container) == "0"


def test_both_images_serve_the_bookstore_page(images: dict[str, str], certs: Path, cleanup: list) -> None:
    http_port, health_port = free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    recommendations, marketplace = f"obfy-recommendations-{suffix}", f"obfy-marketplace-{suffix}"
    cleanup += [["rm", "--force", recommendations], ["rm", "--force", marketplace]]
    mount = f"--volume={certs}:/certs:ro"
    # One network namespace for both, as in a pod (podman's pods start an infra container that
    # rejects the ulimits this machine needs): the marketplace reaches localhost:50051.
    podman(
        *RUN,
        f"--name={recommendations}",
        f"--publish=127.0.0.1:{http_port}:8080",
        f"--publish=127.0.0.1:{health_port}:50052",
        mount,
        *tls_env(REGISTRY["recommendations"]),
        images["recommendations"],
    )
    podman(
        *RUN,
        f"--name={marketplace}",
        f"--network=container:{recommendations}",
        mount,
        *tls_env(REGISTRY["marketplace"]),
        "--env=RECOMMENDATIONS_ADDR=localhost:50051",
        images["marketplace"],
    )
    wait_until_serving(f"127.0.0.1:{health_port}")

    page = wait_for_http(f"http://127.0.0.1:{http_port}/").decode()
    assert "<title>Online Books For You</title>" in page
    assert "Mystery books you may like" in page
    assert page.count("<li") >= 3
    assert "unavailable" not in page

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as response:
        assert response.status == 200
        assert b"SERVING" in response.read()


@pytest.mark.parametrize("service", SERVICES)
def test_umoci_unpacks_the_layout_into_a_runtime_bundle(service: str, tmp_path: Path) -> None:
    """The layout is valid for OCI tools other than podman (umoci checks history and diff_ids)."""
    if shutil.which("umoci") is None:
        pytest.fail("umoci is needed (Debian: apt-get install umoci; ./bazelw does this)")
    layout = tmp_path / "layout"
    shutil.copytree(runfile(REGISTRY[service].image), layout)  # umoci takes a lock file inside the layout
    reference = read_layout(layout).index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    result = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{reference}", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    runtime = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert runtime["process"]["user"]["uid"] == NONROOT
    assert runtime["process"]["args"] == [
        "/usr/bin/python3.11",
        f"/app/online_books/services/{REGISTRY[service].package}/main.py",
    ]
    assert (tmp_path / "bundle" / "rootfs" / "usr" / "bin" / "python3.11").is_file()
