"""checkov, the policy scanner from PyPI, as its own console script runs it, but never on the network.

`--skip-download` keeps it from fetching Bridgecrew's guidelines and check metadata, and BC_SKIP_MAPPING
from looking up the platform's policy mapping: the checks are the ones in the locked release, the same on
every machine. //k8s:checkov_test runs it with Bazel's network blocked, so a new look-up would fail there.
"""

from __future__ import annotations

import os
import sys
import warnings


def main(argv: list[str]) -> int:
    os.environ.setdefault("BC_SKIP_MAPPING", "TRUE")
    from checkov.main import Checkov  # after the environment is set: checkov reads it at import time

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=SyntaxWarning)  # as its console script does
        return Checkov(["--skip-download", *argv]).run() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
