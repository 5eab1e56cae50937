"""The built images run under podman: health over a published loopback port, the non-root uid, a
read-only root file system, a clean exit on SIGTERM, and the page served by both images together.

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

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.processes.processes import free_port, runfile
from libs.runtime.readiness import wait_until_serving
from libs.runtime.tls import TlsFiles, channel_credentials
from tools.certs.certs import mint_all
from tools.oci.oci import read_layout
from tools.oci.podman import RUN, load, podman

NONROOT = 65532
ARCHIVES = {
    "recommendations": runfile("services/recommendations/image.tar"),
    "marketplace": runfile("services/marketplace/image.tar"),
}
LAYOUTS = {
    "recommendations": runfile("services/recommendations/image"),
    "marketplace": runfile("services/marketplace/image"),
}


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("podman and runc are needed (Debian: apt-get install podman runc; ./bazelw does this)")
    if os.geteuid() != 0:
        pytest.fail("the container tests run podman as root")
    return {service: load(archive, LAYOUTS[service]) for service, archive in ARCHIVES.items()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Minted at test time and mounted read-only: no key is ever in an image."""
    out = tmp_path_factory.mktemp("certs")
    mint_all(out, services=("recommendations", "marketplace"))
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


def tls_env(service: str, prefix: str) -> list[str]:
    return [
        f"--env={prefix}_TLS_CERT=/certs/{service}.pem",
        f"--env={prefix}_TLS_KEY=/certs/{service}.key",
        f"--env={prefix}_TLS_CA=/certs/ca.pem",
    ]


def test_recommendations_image_serves_over_published_loopback_ports(
    images: dict[str, str], certs: Path, cleanup: list
) -> None:
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    name = f"obfy-recommendations-{uuid.uuid4().hex[:8]}"
    cleanup.append(["rm", "--force", name])
    started = time.monotonic()
    podman(
        *RUN,
        f"--name={name}",
        f"--publish=127.0.0.1:{grpc_port}:50051",
        f"--publish=127.0.0.1:{health_port}:50052",
        f"--publish=127.0.0.1:{metrics_port}:9090",
        f"--volume={certs}:/certs:ro",
        *tls_env("recommendations", "RECOMMENDATIONS"),
        images["recommendations"],
    )
    wait_until_serving(f"127.0.0.1:{health_port}")
    print(f"podman run -> SERVING: {time.monotonic() - started:.2f} s")

    # A real call over mTLS, as the marketplace.
    credentials = channel_credentials(TlsFiles(certs / "marketplace.pem", certs / "marketplace.key", certs / "ca.pem"))
    with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
        stub = recommendations_pb2_grpc.RecommendationServiceStub(channel)
        reply = stub.Recommend(
            recommendations_pb2.RecommendRequest(user_id=1, category=catalog_pb2.MYSTERY, max_results=3), timeout=5
        )
    assert len(reply.recommendations) == 3

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'grpc_method="Recommend"' in metrics
    assert 'grpc_code="OK"' in metrics

    pid = podman("inspect", "--format", "{{.State.Pid}}", name)
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
    assert uid_line.split()[1:] == [str(NONROOT)] * 4, uid_line
    assert gid_line.split()[1:] == [str(NONROOT)] * 4, gid_line

    podman("stop", "--time=30", name)  # SIGTERM: drain, then exit
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name) == "0"


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
        *tls_env("recommendations", "RECOMMENDATIONS"),
        images["recommendations"],
    )
    podman(
        *RUN,
        f"--name={marketplace}",
        f"--network=container:{recommendations}",
        mount,
        *tls_env("marketplace", "MARKETPLACE"),
        "--env=RECOMMENDATIONS_ADDR=localhost:50051",
        images["marketplace"],
    )
    wait_until_serving(f"127.0.0.1:{health_port}")

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=5) as response:
                page = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert "<title>Online Books For You</title>" in page
    assert "Mystery books you may like" in page
    assert page.count("<li") >= 3
    assert "unavailable" not in page

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as response:
        assert response.status == 200
        assert b"SERVING" in response.read()


@pytest.mark.parametrize("service", sorted(LAYOUTS))
def test_umoci_unpacks_the_layout_into_a_runtime_bundle(service: str, tmp_path: Path) -> None:
    """The layout is valid for OCI tools other than podman (umoci checks history and diff_ids)."""
    if shutil.which("umoci") is None:
        pytest.fail("umoci is needed (Debian: apt-get install umoci; ./bazelw does this)")
    layout = tmp_path / "layout"
    shutil.copytree(LAYOUTS[service], layout)  # umoci takes a lock file inside the layout
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
    assert runtime["process"]["args"] == ["/usr/bin/python3.11", f"/app/online_books/services/{service}/main.py"]
    assert (tmp_path / "bundle" / "rootfs" / "usr" / "bin" / "python3.11").is_file()
