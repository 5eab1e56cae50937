"""Every program a user is told to run answers `--help`: prints its usage and exits 0, doing nothing else.

Each `help_test` (tests/help/defs.bzl) names its programs and a README: tests/help's are every service of
services/services.bzl (so a generated service is covered with no new test), its `:push`, and every tool
README.md tells a user to `./bazelw run`; bench/ has its own. A test here fails when the README names a
program its list lacks.
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


def listed() -> dict[str, Path]:
    """What this test's `_programs` genrule wrote: "README" → the README, label → the program."""
    package, name = os.environ["TEST_TARGET"].removeprefix("//").split(":")
    found = {}
    for line in runfile(f"{package}/{name}_programs.txt").read_text().splitlines():
        label, path = line.split(" ", 1)
        found[label if label == "README" else canonical(label)] = runfile(path)
    return found


def programs() -> dict[str, Path]:
    """label → the program in the runfiles."""
    return {label: path for label, path in listed().items() if label != "README"}


def is_a_removed_service(label: str, known: dict[str, Path]) -> bool:
    """README's commands for a service that is no longer in the list (the examples, once removed) name no
    program: services/<package>:<package> of every listed service is among `known`."""
    package = label.removeprefix("//").split(":")[0]
    return package.startswith("services/") and canonical(f"//{package}") not in known


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One case per program, listed when pytest collects (importing this module reads no runfiles)."""
    if "label" in metafunc.fixturenames:
        metafunc.parametrize("label", sorted(programs()))


def test_every_program_readme_tells_users_to_run_is_checked() -> None:
    readme = listed()["README"]
    known = programs()
    named = {canonical(label) for label in README_RUNS.findall(readme.read_text())}
    assert named, f"{readme.name} names no program: is this the right README?"
    missing = sorted(label for label in named - set(known) if not is_a_removed_service(label, known))
    assert not missing, f"{readme.name} tells users to run {missing}: add them to its help_test's programs"


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
