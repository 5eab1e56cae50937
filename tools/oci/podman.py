"""podman as this project runs it (tests and benchmarks), as root or rootless: runc, explicit ulimits.

On this machine kind podman works only with runc, cgroupfs and file events (crun fails on its
cgroup setup), and needs explicit ulimits (containers.conf, for `podman run` and `podman kube play`
alike); Bazel's PATH lacks the sbin directories where netavark finds iptables. Images are addressed by
their config digest, which podman uses as the image ID, so what runs is exactly what Bazel built.
`RUN` starts a container as the Kubernetes overlays run a pod: read-only root, every capability
dropped, no privilege escalation, as the image's non-root user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from tools.oci.oci import read_layout

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
RUN = ["run", "--detach", "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"]
ENV = dict(
    os.environ,
    PATH=os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin",
    CONTAINERS_CONF=str(Path(__file__).with_name("containers.conf")),
)


def podman(*args: str, check: bool = True) -> str:
    """Runs podman; returns its stdout, or raises with its stderr."""
    result = subprocess.run(PODMAN + list(args), capture_output=True, text=True, timeout=120, check=False, env=ENV)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout.strip()


def logs(container: str) -> str:
    """What the container wrote, stdout and stderr (where the services log) together."""
    result = subprocess.run(
        [*PODMAN, "logs", container], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, env=ENV
    )
    return result.stdout


def image_id(layout: Path) -> str:
    """The image ID podman gives the image of an OCI layout: its config digest."""
    return read_layout(layout).manifest["config"]["digest"].removeprefix("sha256:")


def load(archive: Path, layout: Path) -> str:
    """Loads the archive of an `oci_load` target (`<name>/tarball.tar`); returns the ID to run it by."""
    podman("load", "--quiet", "--input", str(archive))
    wanted = image_id(layout)
    if podman("image", "inspect", "--format", "{{.Id}}", wanted) != wanted:
        raise RuntimeError(f"podman loaded {archive} under another ID than {wanted}")
    return wanted


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
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "rootless podman's network (slirp4netns) needs /dev/net/tun open to all: `chmod 0666 /dev/net/tun`"
    return None
