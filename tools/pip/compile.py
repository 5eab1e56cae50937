"""Re-locks a requirements.in into its hash-locked lock file in the source tree with pip-compile.

Run through `bazel run //:requirements.update [-- pip-compile options]` (or the `.update` target of any
other compile_pip_requirements); Bazel passes the two paths relative to the workspace, and
BUILD_WORKSPACE_DIRECTORY says where the source tree is.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import urllib.request
from pathlib import Path

from piptools.scripts.compile import cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Any other option is pip-compile's (--pip-compile-help lists them)."
    )
    parser.add_argument("requirements_in", help="the direct requirements (the macro passes it)")
    parser.add_argument("requirements_lock", help="the lock file to write (the macro passes it)")
    parser.add_argument(
        "--command", default="", help="how to re-lock, for the lock file's header (the macro passes it)"
    )
    parser.add_argument("--pip-compile-help", action="store_true", help="print pip-compile's options")
    args, extra = parser.parse_known_args(argv)
    if args.pip_compile_help:
        cli.main(args=["--help"], prog_name="pip-compile", standalone_mode=False)
        return 0
    requirements_in, requirements_lock = args.requirements_in, args.requirements_lock
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        print("run this with `bazel run`, which sets BUILD_WORKSPACE_DIRECTORY", file=sys.stderr)
        return 2
    os.chdir(workspace)
    # Shown in the lock file's header as the way to regenerate it.
    if args.command:
        os.environ.setdefault("CUSTOM_COMPILE_COMMAND", args.command)
    compile_args = [
        "--generate-hashes",
        "--allow-unsafe",  # pip and setuptools are pinned too: pip-tools needs pip at run time
        "--strip-extras",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--output-file",
        requirements_lock,
        *extra,
        requirements_in,
    ]
    # `cli` is a click command; standalone_mode=False returns instead of calling sys.exit.
    cli.main(args=compile_args, prog_name="pip-compile", standalone_mode=False)
    for line in without_arm64_wheel(requirements_lock):
        print(f"no arm64 wheel among the locked files: {line}", file=sys.stderr)
    return 0


def arm64_wheel(filename: str) -> bool:
    """A wheel an arm64 image's Python 3.11 on glibc can install: pure, or built for Linux aarch64."""
    if not filename.endswith(".whl"):
        return False
    python, abi, platform = filename[:-4].split("-")[-3:]
    runs_on_311 = any(tag in ("py3", "cp311") or tag.startswith("cp3") and abi == "abi3" for tag in python.split("."))
    return runs_on_311 and (platform == "any" or "manylinux" in platform and "aarch64" in platform)


def without_arm64_wheel(lock: str) -> list[str]:
    """`name==version` of each locked distribution none of whose locked files is an arm64 wheel."""
    pins: dict[str, set[str]] = {}
    current = ""
    for line in Path(lock).read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*==\S+)", line):
            current = match.group(1)
            pins[current] = set()
        elif current and (hashed := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current].add(hashed.group(1))
    missing = []
    for pin, hashes in pins.items():
        name = pin.split("==")[0]
        # PyPI's simple index (PEP 503): an anchor per file, its sha256 in the link's fragment.
        with urllib.request.urlopen(f"https://pypi.org/simple/{name}/", timeout=60) as response:
            page = response.read().decode()
        files = re.findall(r'href="[^"#]*#sha256=([0-9a-f]{64})"[^>]*>([^<]+)</a>', page)
        if not any(sha256 in hashes and arm64_wheel(filename) for sha256, filename in files):
            missing.append(pin)
    return missing


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
