"""Re-pins the images' Debian packages: `./bazelw run //tools/oci:update_packages`.

Reads the package names in tools/oci/debian_packages.in, asks apt for each one's current candidate for
each `--architecture` (amd64 and arm64 by default; run `apt-get update` first to see the archive as it is
today; another architecture's lists are fetched into a scratch directory) and rewrites
tools/oci/debian_packages.lock with name, version, architecture, size and the SHA256 from the apt
metadata, a line per package and architecture ("all" packages once). Dependencies of the listed packages
that are not listed themselves are printed, so a missing shared library is a decision, not an accident.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path

from tools.oci.fetch_debs import apt_options

LOG = logging.getLogger("update_packages")
HEADER = """\
# Pinned Debian packages of {input}; generated, do not edit.
# Re-pin with: ./bazelw run //tools/oci:update_packages{flags} (after `apt-get update`).
# name version architecture size sha256
"""


def package_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def apt_fields(name: str, options: list[str]) -> dict[str, str]:
    """The control fields of the candidate version, as `apt-cache show` prints them."""
    out = subprocess.run(
        ["apt-cache", *options, "show", "--no-all-versions", name], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"apt does not know the package {name!r}: {out.stderr.strip()}")
    fields: dict[str, str] = {}
    key = ""
    for line in out.stdout.splitlines():
        if not line:
            break  # first stanza only
        if line[0].isspace() and key:
            fields[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def dependency_names(depends: str) -> list[list[str]]:
    """Alternatives of each dependency in a Depends/Pre-Depends field: [['a'], ['b', 'c'], ...]."""
    groups = []
    for group in filter(None, (part.strip() for part in depends.split(","))):
        groups.append([re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")])
    return groups


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    workspace = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    parser.add_argument("--input", default="tools/oci/debian_packages.in", help="relative to the workspace")
    parser.add_argument("--lock", default="tools/oci/debian_packages.lock", help="relative to the workspace")
    parser.add_argument("--architecture", action="append", help="Debian's name; repeat it (default: amd64, arm64)")
    args = parser.parse_args()
    architectures = args.architecture or ["amd64", "arm64"]
    flags = "" if args.input == parser.get_default("input") else f" -- --input {args.input} --lock {args.lock}"
    if args.architecture:
        flags = (flags or " --") + "".join(f" --architecture {architecture}" for architecture in architectures)
    header = HEADER.format(input=args.input, flags=flags)
    args.input, args.lock = workspace / args.input, workspace / args.lock

    names = package_names(args.input)
    rows, left_out = set(), set()
    with tempfile.TemporaryDirectory() as scratch:
        for architecture in architectures:
            options = apt_options(architecture, Path(scratch, architecture))
            for name in names:
                fields = apt_fields(name, options)
                rows.add(" ".join([name, fields["Version"], fields["Architecture"], fields["Size"], fields["SHA256"]]))
                for field in ("Pre-Depends", "Depends"):
                    for alternatives in dependency_names(fields.get(field, "")):
                        if not any(alt in names for alt in alternatives):
                            left_out.add(f"{' | '.join(alternatives)} (needed by {name})")
    args.lock.write_text(header + "\n".join(sorted(rows)) + "\n")
    LOG.info("Pinned %d packages for %s into %s", len(rows), " and ".join(architectures), args.lock)
    for line in sorted(left_out):
        LOG.info("left out on purpose? %s", line)


if __name__ == "__main__":
    main()
