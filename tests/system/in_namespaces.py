"""Runs the system tests where they can make network namespaces: as root, or as root of a user namespace.

The test bed (testbed.py) creates named network namespaces with `ip netns`, which needs root. An ordinary
user gets the same without any privilege from unprivileged user namespaces: `unshare --user
--map-root-user --net --mount` makes this process root of a user namespace of its own, with its own
network (nothing of the machine's) and mount namespace, where a tmpfs on /run gives `ip netns` the
/run/netns it mounts into. Where user namespaces are disabled, the tests are skipped with a message
saying so (SKIP_REASON), never passed silently.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tools.pytest.pytest_main import main as pytest_main

UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount"]
INSIDE = "OBFY_IN_NAMESPACES"  # set once this process is the namespace's root, so it does not go in again
SKIP_REASON = "OBFY_NAMESPACES_UNAVAILABLE"  # why the tests cannot run here, for the fixture to skip with
ENTER = 'mount -t tmpfs tmpfs /run && mkdir -p /run/netns && exec "$@"'


def main(argv: list[str]) -> int:
    if os.geteuid() == 0 or os.environ.get(INSIDE):
        return pytest_main(argv)
    probe = subprocess.run([*UNSHARE, "sh", "-c", ENTER, "sh", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        os.environ[SKIP_REASON] = (
            "the system tests need root, or unprivileged user namespaces for `unshare --user --map-root-user --net "
            f"--mount` (sysctl kernel.unprivileged_userns_clone=1 where it exists); here: {probe.stderr.strip()}"
        )
        return pytest_main(argv)
    os.environ[INSIDE] = "1"
    os.execvp(UNSHARE[0], [*UNSHARE, "--", "sh", "-c", ENTER, "sh", sys.executable, __file__, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
