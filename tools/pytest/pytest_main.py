"""Runs pytest on the files given as arguments, following Bazel's test protocol.

- JUnit XML goes to XML_OUTPUT_FILE so Bazel shows per-test results.
- TESTBRIDGE_TEST_ONLY (`bazel test --test_filter=EXPR`) becomes `pytest -k EXPR`.
- Temporary files go to TEST_TMPDIR; pytest's cache is off (the source tree is read-only).
- Any outcome other than "all collected tests passed" exits non-zero, "no tests collected" included.
"""

from __future__ import annotations

import os
import sys

import pytest


def main(argv: list[str]) -> int:
    args = ["-p", "no:cacheprovider", "--import-mode=importlib", "-o", "console_output_style=classic", *argv]
    if xml := os.environ.get("XML_OUTPUT_FILE"):
        args += ["--junitxml", xml]
    if test_filter := os.environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", test_filter]
    if tmp := os.environ.get("TEST_TMPDIR"):
        args += ["--basetemp", os.path.join(tmp, "pytest")]
    code = int(pytest.main(args))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("pytest collected no tests: failing, as a test target that tests nothing is a bug", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
