"""One combined coverage report of first-party code: `./bazelw run //tools/coverage [-- TARGETS...]`.

Runs the pytest tests among the targets (by default //libs/... //services/... //tools/... //k8s/...
//proto/...) that run their code in-process, with `--test_env=COVERAGE=1`, which makes the pytest shim
record coverage.py data beside each test's outputs; combines them, mapping each runfiles copy of a file
back to the source tree, and writes `coverage/lcov.info` and `coverage/html/index.html`. Prints the total
and exits 2 when it is below `fail_under` in tools/coverage/coveragerc (CI's floor).

`bazel coverage` itself needs Bazel's coverage tools, downloaded from mirror.bazel.build, which is out of
reach here (tools/stubs/remote_coverage_tools). Code that tests run in child processes (the integration,
system and container tests start built binaries) is not measured: the unit and in-process server tests
cover the libraries and services.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import coverage

from libs.processes.processes import runfile

DEFAULT_TARGETS = ["//libs/...", "//services/...", "//tools/...", "//k8s/...", "//proto/..."]
# Only py_test targets run the pytest shim that records coverage; the others (mypy, buf, image rebuilds)
# and those that start processes or containers measure nothing in-process: they would only cost time.
MEASURED = 'kind("^py_test rule$", tests({targets}))'  # anchored: "py_test rule" is in "py_mypy_test rule"
SKIP_TAGS = "-local,-exclusive"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=DEFAULT_TARGETS, help="test targets (default: %(default)s)")
    targets = parser.parse_args(argv).targets
    workspace = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    query = subprocess.run(
        ["./bazelw", "query", MEASURED.format(targets=" + ".join(targets))],
        cwd=workspace,
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    measured = query.stdout.split()
    if query.returncode or not measured:
        print(f"coverage: no pytest test among {' '.join(targets)}", file=sys.stderr)
        return query.returncode or 1
    tested = subprocess.run(
        ["./bazelw", "test", *measured, "--test_env=COVERAGE=1", f"--test_tag_filters={SKIP_TAGS}"],
        cwd=workspace,
        check=False,
    )
    if tested.returncode not in (0, 3):  # 3: some tests failed; their coverage still counts, CI fails on them
        print("coverage: the tests did not run", file=sys.stderr)
        return tested.returncode
    config = str(runfile("tools/coverage/coveragerc"))
    out = workspace / "coverage"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        data_files = []
        for number, outputs in enumerate(sorted((workspace / "bazel-testlogs").glob("**/test.outputs/outputs.zip"))):
            with zipfile.ZipFile(outputs) as archive:
                if "coverage.data" in archive.namelist():
                    target = Path(scratch) / f"coverage.data.{number}"
                    target.write_bytes(archive.read("coverage.data"))
                    data_files.append(str(target))
        os.chdir(workspace)
        combined = coverage.Coverage(data_file=str(out / "coverage.data"), config_file=config)
        combined.combine(data_files, keep=True)
        combined.save()
    combined.lcov_report(outfile=str(out / "lcov.info"))
    combined.html_report(directory=str(out / "html"))
    try:
        with open(os.devnull, "w") as quiet:  # the total, not coverage.py's per-file table
            total = combined.report(file=quiet)
    except coverage.exceptions.NoDataError:
        print("coverage: no data (did the tests run with the pytest shim?)", file=sys.stderr)
        return 1
    floor = float(str(combined.get_option("report:fail_under")))
    print(f"coverage of first-party code: {total:.1f} % (floor {floor} %) from {len(data_files)} test targets")
    print(f"  {out / 'lcov.info'}\n  {out / 'html' / 'index.html'}")
    return 2 if total < floor else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
