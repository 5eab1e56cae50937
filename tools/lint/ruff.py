"""Runs the locked ruff on the source tree: `./bazelw run //tools/lint:ruff -- check .`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The ruff binary of @pypi//:ruff_scripts, beside our workspace in this binary's runfiles.
RUFF = Path(__file__).parents[3] / "pypi" / "site-packages" / "bin" / "ruff"


def main(argv: list[str]) -> int:
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        print("run this with `bazel run`, which sets BUILD_WORKSPACE_DIRECTORY", file=sys.stderr)
        return 2
    os.chdir(workspace)
    os.execv(RUFF, [str(RUFF), *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
