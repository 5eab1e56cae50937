"""Re-locks a requirements.in into its hash-locked lock file in the source tree with pip-compile.

Run through `bazel run //:requirements.update [-- pip-compile options]` (or the `.update` target of any
other compile_pip_requirements); Bazel passes the two paths relative to the workspace, and
BUILD_WORKSPACE_DIRECTORY says where the source tree is.
"""

from __future__ import annotations

import argparse
import os
import sys

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
    args = [
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
    cli.main(args=args, prog_name="pip-compile", standalone_mode=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
