"""The built image of every service in services/services.bzl runs under podman: it answers on published
loopback ports (a gRPC service: SERVING, its API by reflection, its allow rules under mTLS, metrics), runs
as the non-root uid on a read-only root file system and exits cleanly on SIGTERM; and the bookstore's two
images together serve the page.

Needs podman with runc (`.ci/run` and `bazelw` install them on Debian), as root or rootless (subordinate
ids in /etc/subuid and /etc/subgid, newuidmap: the test is skipped naming what is missing). podman runs
with the flags this machine kind needs (tools/oci/podman.py); ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    missing = rootless_problem()
    if missing:
        pytest.skip(missing)
    return {name: load(runfile(f"{s.image}.tar"), runfile(s.image)) for name, s in REGISTRY.items()}


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


def rootless_problem() -> str | None:
    """Why podman cannot run containers for this (non-root) user, or None."""
    if os.geteuid() == 0:
        return None
    user = pwd.getpwuid(os.geteuid()).pw_name
    ranges = Path("/etc/subuid").read_text() if Path("/etc/subuid").exists() else ""
    if not any(line.split(":")[0] in (user, str(os.geteuid())) for line in ranges.splitlines()):
        ids = "--add-subuids 100000-165535 --add-subgids 100000-165535"
        return f"rootless podman needs subordinate ids for {user}: `usermod {ids} {user}` (as root)"
    if shutil.which("newuidmap") is None:
        return "rootless podman needs newuidmap and newgidmap (Debian: apt-get install uidmap)"
    return None


def owned_by_container_user(path: Path) -> None:
    """chown to the image's user: directly as root; rootless, inside podman's user namespace (where
    uid 65532 is the subordinate id the container's 65532 maps to)."""
    if os.geteuid() == 0:
        os.chown(path, NONROOT, NONROOT)
    else:
        podman("unshare", "chown", f"{NONROOT}:{NONROOT}", str(path))


def uid_and_gid_in_container(pid: int) -> tuple[list[int], list[int]]:
    """The process's real, effective, saved and fs uids and gids as the container sees them: the host's
    numbers mapped back through its user namespace (identity for rootful podman)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()

    def inside(ids: list[int], map_file: str) -> list[int]:
        rows = [list(map(int, line.split())) for line in Path(f"/proc/{pid}/{map_file}").read_text().splitlines()]
        return [
            next(i - outside + start for start, outside, count in rows if outside <= i < outside + count) for i in ids
        ]

    uids = [int(n) for n in next(line for line in status if line.startswith("Uid:")).split()[1:]]
    gids = [int(n) for n in next(line for line in status if line.startswith("Gid:")).split()[1:]]
    return inside(uids, "uid_map"), inside(gids, "gid_map")


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
                empty: dict[str, Any] | list[dict[str, Any]] = {}
                if client.method(service.grpc_service, method).client_streaming:
                    empty = [{}]
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
        mount(certs, service),
        *tls_env(service),
        images[name],
    )
    if service.kind == "grpc":
        check_grpc_image(service, certs, published)
    else:
        wait_for_http(f"http://127.0.0.1:{published[service.port]}/healthz")
    print(f"{name}: podman run -> answering: {time.monotonic() - started:.2f} s")

    uids, gids = uid_and_gid_in_container(int(podman("inspect", "--format", "{{.State.Pid}}", container)))
    assert uids == [NONROOT] * 4
    assert gids == [NONROOT] * 4

    podman("stop", "--time=30", container)  # SIGTERM: drain, then exit
    assert podman("inspect", "--format", "{{.State.ExitCode}}", container) == "0"


def test_both_images_serve_the_bookstore_page(images: dict[str, str], certs: Path, cleanup: list) -> None:
    http_port, health_port = free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    recommendations, marketplace = f"obfy-recommendations-{suffix}", f"obfy-marketplace-{suffix}"
    cleanup += [["rm", "--force", recommendations], ["rm", "--force", marketplace]]
    # One network namespace for both, as in a pod (podman's pods start an infra container that
    # rejects the ulimits this machine needs): the marketplace reaches localhost:50051.
    podman(
        *RUN,
        f"--name={recommendations}",
        f"--publish=127.0.0.1:{http_port}:8080",
        f"--publish=127.0.0.1:{health_port}:50052",
        mount(certs, REGISTRY["recommendations"]),
        *tls_env(REGISTRY["recommendations"]),
        images["recommendations"],
    )
    podman(
        *RUN,
        f"--name={marketplace}",
        f"--network=container:{recommendations}",
        mount(certs, REGISTRY["marketplace"]),
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
        [
            "umoci",
            "unpack",
            *(["--rootless"] if os.geteuid() else []),
            "--image",
            f"{layout}:{reference}",
            str(tmp_path / "bundle"),
        ],
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
