"""Every program a user is told to run answers `--help`: prints its usage and exits 0, doing nothing else.

The programs are every service of services/services.bzl (so a generated service is covered with no new
test), its `:push`, and every target README.md tells a user to `./bazelw run`; tests/help/BUILD.bazel
lists them, and a test here fails when README names a program that list lacks.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from libs.processes.processes import runfile

README_RUNS = re.compile(r"\./bazelw run (//[\w/.:-]*\w)(?![\w/<])")  # not //services/<svc>:push


def canonical(label: str) -> str:
    """`//tools/certs` → `//tools/certs:certs`; `//:dev` stays."""
    return label if ":" in label else f"{label}:{label.rsplit('/', 1)[-1]}"


def programs() -> dict[str, Path]:
    """label → the program in the runfiles (written by the `programs` genrule)."""
    found = {}
    for line in runfile("tests/help/programs.txt").read_text().splitlines():
        label, path = line.split(" ", 1)
        found[canonical(label)] = runfile(path)
    return found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One case per program, listed when pytest collects (importing this module reads no runfiles)."""
    if "label" in metafunc.fixturenames:
        metafunc.parametrize("label", sorted(programs()))


def test_every_program_readme_tells_users_to_run_is_checked() -> None:
    named = {canonical(label) for label in README_RUNS.findall(runfile("README.md").read_text())}
    assert len(named) >= 10, f"README.md seems to name too few programs: {sorted(named)}"
    missing = sorted(named - set(programs()))
    assert not missing, f"README.md tells users to run {missing}: add them to PROGRAMS in tests/help/BUILD.bazel"


def test_help_prints_usage_and_exits_zero(label: str, tmp_path: Path) -> None:
    # As `bazel run` starts it, but in an empty workspace: a program that ignored --help and went on to
    # write into the workspace would be caught by the check below rather than touch the repository.
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    env = {
        **os.environ,
        "BUILD_WORKSPACE_DIRECTORY": str(workspace),
        "BUILD_WORKING_DIRECTORY": str(workspace),
    }
    result = subprocess.run(
        [str(programs()[label]), "--help"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{label} --help exited {result.returncode}:\n{output[-3000:]}"
    assert re.search(r"^\s*usage:", output, re.IGNORECASE | re.MULTILINE), f"{label} --help printed no usage:\n{output}"
    assert "Traceback" not in output, output
    assert not list(workspace.iterdir()), f"{label} --help wrote {sorted(workspace.iterdir())}"
