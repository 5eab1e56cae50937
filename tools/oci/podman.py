"""podman as this project runs it (tests and benchmarks): root, runc, explicit ulimits.

On this machine kind podman works only with runc, cgroupfs and file events (crun fails on its
cgroup setup), and needs explicit ulimits; Bazel's PATH lacks the sbin directories where netavark
finds iptables. Images are addressed by their config digest, which podman uses as the image ID, so
what runs is exactly what Bazel built.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tools.oci.oci import read_layout

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
RUN = ["run", "--detach", "--read-only", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
ENV = dict(os.environ, PATH=os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin")


def podman(*args: str, check: bool = True) -> str:
    """Runs podman; returns its stdout, or raises with its stderr."""
    result = subprocess.run(PODMAN + list(args), capture_output=True, text=True, timeout=120, check=False, env=ENV)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout.strip()


def image_id(layout: Path) -> str:
    """The image ID podman gives the image of an OCI layout: its config digest."""
    return read_layout(layout).manifest["config"]["digest"].removeprefix("sha256:")


def load(archive: Path, layout: Path) -> str:
    """Loads an `:image.tar`; returns the ID to run it by."""
    podman("load", "--quiet", "--input", str(archive))
    wanted = image_id(layout)
    if podman("image", "inspect", "--format", "{{.Id}}", wanted) != wanted:
        raise RuntimeError(f"podman loaded {archive} under another ID than {wanted}")
    return wanted
