"""Image figures for //bench: size of every layer of both images, and podman run → SERVING.

Sizes come from the OCI layouts Bazel built (compressed = the blob, uncompressed = the tar inside).
The start-up time runs the recommendations image with podman (tools/oci/podman.py) and polls the
plaintext health port published on 127.0.0.1; it is skipped, with a note, where podman is missing.
"""

from __future__ import annotations

import gzip
import shutil
import statistics
import time
import uuid

from libs.processes.processes import free_port, runfile
from libs.runtime.readiness import wait_until_serving
from tools.oci.oci import read_layout
from tools.oci.podman import RUN, load, podman

SERVICES = ("recommendations", "marketplace")


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def layer_rows(service: str) -> list[tuple[str, str, str, str]]:
    """One row per layer and one for the image: compressed and uncompressed size."""
    image = read_layout(runfile(f"services/{service}/image"))
    rows, total, total_unpacked = [], 0, 0
    for layer, history in zip(image.manifest["layers"], image.config["history"], strict=True):
        with gzip.open(image.blob(layer["digest"])) as stream:
            unpacked = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 20), b""))
        total, total_unpacked = total + layer["size"], total_unpacked + unpacked
        what = history["created_by"].split(": ", 1)[1].split(" of ")[0]  # "20 Debian packages", "app files"
        rows.append((f"Image {service}: {what}", megabytes(layer["size"]), megabytes(unpacked), layer["digest"][:19]))
    rows.append((f"Image {service}: total", megabytes(total), megabytes(total_unpacked), image.manifest_digest[:19]))
    return rows


def container_start_to_serving(samples: int) -> tuple[str, str]:
    """Median seconds from `podman run` of the recommendations image to SERVING, and a note."""
    if shutil.which("podman") is None:
        return "not measured", "podman missing (apt-get install podman runc)"
    service = "recommendations"
    image = load(runfile(f"services/{service}/load/tarball.tar"), runfile(f"services/{service}/image"))
    times = []
    for _ in range(samples):
        port, name = free_port(), f"obfy-bench-{uuid.uuid4().hex[:8]}"
        begun = time.monotonic()
        try:
            publish = f"--publish=127.0.0.1:{port}:50052"
            podman(*RUN, f"--name={name}", publish, "--env=RECOMMENDATIONS_INSECURE=1", image)
            wait_until_serving(f"127.0.0.1:{port}")
            times.append(time.monotonic() - begun)
        finally:
            podman("rm", "--force", name, check=False)
    return f"{statistics.median(times):.2f} s", f"median of {samples}, podman run (runc) of the image"


def image_rows() -> list[tuple[str, str, str, str]]:
    rows = [row for service in SERVICES for row in layer_rows(service)]
    value, note = container_start_to_serving(5)
    rows.append(("Recommendations image: podman run → SERVING", value, "", note))
    return rows
