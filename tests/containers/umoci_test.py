"""umoci, an OCI tool other than podman, unpacks every service's image into a runtime bundle (it checks the
layout, the history and the diff_ids). Debian's umoci 0.4.7 reads gzip layers only, so it is given the
images built with `--//tools/oci:compression=gzip` (the build setting for engines without zstd); the
layouts are the same otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from libs.processes.processes import runfile
from services.registry import REGISTRY
from tests.containers.running import NONROOT
from tools.oci.oci import MEDIA_TYPES, read_layout

SERVICES = list(REGISTRY)


@pytest.mark.parametrize("service", SERVICES)
def test_umoci_unpacks_the_layout_into_a_runtime_bundle(service: str, tmp_path: Path) -> None:
    """The layout is valid for OCI tools other than podman (umoci checks history and diff_ids)."""
    if shutil.which("umoci") is None:
        pytest.fail("umoci is needed (Debian: apt-get install umoci; ./bazelw does this)")
    layout = tmp_path / "layout"
    shutil.copytree(runfile(REGISTRY[service].image), layout)
    assert {layer["mediaType"] for layer in read_layout(layout).manifest["layers"]} == {
        MEDIA_TYPES["gzip"]
    }  # umoci takes a lock file inside the layout
    # umoci unpacks an image by name; oci_image's layout has none (as rules_oci's), so name the copy.
    index = read_layout(layout).index
    index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "unpacked"}
    (layout / "index.json").chmod(0o644)  # copied read-only, as Bazel's outputs are
    (layout / "index.json").write_text(json.dumps(index))
    result = subprocess.run(
        [
            "umoci",
            "unpack",
            *(["--rootless"] if os.geteuid() else []),
            "--image",
            f"{layout}:unpacked",
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
