"""Copies files out of Debian packages, for the Prometheus and Alertmanager of tools/monitoring/BUILD.bazel.

extract.py file PACKAGE.deb PATH-IN-PACKAGE OUTPUT     # one executable (Go binaries need only libc)
extract.py tree OUTPUT-DIR --prefix P [--prefix P ...] PACKAGE.deb...
                                                       # every file and link under the prefixes
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

from tools.oci.layer import ar_members, open_member


def data_of(deb: Path) -> tarfile.TarFile:
    return open_member(ar_members(deb.read_bytes()), "data")


def extract_file(deb: Path, member: str, output: Path) -> None:
    with data_of(deb) as data:
        entry = data.extractfile("./" + member.lstrip("/"))
        if entry is None:
            raise SystemExit(f"{member} is not a regular file in {deb}")
        output.write_bytes(entry.read())
    output.chmod(0o755)


def extract_tree(debs: list[Path], prefixes: list[str], output: Path) -> int:
    """Files, directories and symbolic links (relative ones keep working: the layout is the package's)."""
    count = 0
    for deb in debs:
        with data_of(deb) as data:
            for member in data.getmembers():
                path = member.name.removeprefix("./")
                if not any(path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in prefixes):
                    continue
                target = output / path
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    target.symlink_to(member.linkname)
                elif member.isfile():
                    target.write_bytes(data.extractfile(member).read())  # type: ignore[union-attr]
                    target.chmod(0o644)
                count += 1
    for dangling in drop_dangling_links(output):
        print(f"dropped {dangling}: its target is in no package extracted", file=sys.stderr)
    return count


def drop_dangling_links(tree: Path) -> list[str]:
    """Removes links whose target is not in `tree` (into packages not extracted, e.g. sources the UI does
    not load), until none is left: a tree with dangling links is no valid Bazel output."""
    dropped: list[str] = []
    while dangling := [p for p in tree.rglob("*") if p.is_symlink() and not p.exists()]:
        for link in dangling:
            link.unlink()
            dropped.append(str(link.relative_to(tree)))
    return dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("file")
    one.add_argument("deb", type=Path)
    one.add_argument("member")
    one.add_argument("output", type=Path)
    tree = sub.add_parser("tree")
    tree.add_argument("output", type=Path)
    tree.add_argument("--prefix", action="append", required=True)
    tree.add_argument("debs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.mode == "file":
        extract_file(args.deb, args.member, args.output)
    elif not extract_tree(args.debs, args.prefix, args.output):
        raise SystemExit(f"nothing under {', '.join(args.prefix)} in the packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
