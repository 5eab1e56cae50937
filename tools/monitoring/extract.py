"""Copies one file out of a Debian package: `extract.py PACKAGE.deb PATH-IN-PACKAGE OUTPUT`.

For the Go binaries of Prometheus and Alertmanager (tools/monitoring/BUILD.bazel), which need nothing of
their packages but themselves and libc.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tools.oci.layer import ar_members, open_member


def main(deb: Path, member: str, output: Path) -> int:
    with open_member(ar_members(deb.read_bytes()), "data") as data:
        entry = data.extractfile("./" + member.lstrip("/"))
        if entry is None:
            raise SystemExit(f"{member} is not a regular file in {deb}")
        output.write_bytes(entry.read())
    output.chmod(0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))
