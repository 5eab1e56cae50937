"""Runs pytest on the files given as arguments, following Bazel's test protocol.

- JUnit XML goes to XML_OUTPUT_FILE so Bazel shows per-test results.
- TESTBRIDGE_TEST_ONLY (`bazel test --test_filter=EXPR`) becomes `pytest -k EXPR`.
- Temporary files go to TEST_TMPDIR; pytest's cache is off (the source tree is read-only).
- Any outcome other than "all collected tests passed" exits non-zero, "no tests collected" included.
- With COVERAGE=1 in the test's environment (`--test_env=COVERAGE=1`, which //tools/coverage passes),
  the tests run under coverage.py, which writes its data beside the test's other outputs
  (TEST_UNDECLARED_OUTPUTS_DIR) for //tools/coverage to combine.
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
    code = int(pytest.main(args)) if not os.environ.get("COVERAGE") else with_coverage(args)
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("pytest collected no tests: failing, as a test target that tests nothing is a bug", file=sys.stderr)
    return code


def with_coverage(args: list[str]) -> int:
    """pytest under coverage.py: line and branch data of the code the tests run, in this process."""
    import coverage  # only in coverage runs: the dependency is there, the import cost is not paid otherwise

    outputs = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR") or os.environ.get("TEST_TMPDIR", ".")
    measured = coverage.Coverage(data_file=os.path.join(outputs, "coverage.data"), branch=True, config_file=False)
    measured.start()
    try:
        return int(pytest.main(args))
    finally:
        measured.stop()
        measured.save()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
