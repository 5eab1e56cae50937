"""The pytest shim follows Bazel's test protocol: exit codes, JUnit XML, --test_filter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHIM = Path(__file__).with_name("pytest_main.py")

SAMPLE = """
def test_passes():
    assert True

def test_fails():
    assert 1 == 2
"""


def run_shim(tmp_path: Path, source: str, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    test_file = tmp_path / "sample_test.py"
    test_file.write_text(source)
    xml = tmp_path / "out.xml"
    inherited = {key: value for key, value in os.environ.items() if key != "TESTBRIDGE_TEST_ONLY"}
    environment = {**inherited, "XML_OUTPUT_FILE": str(xml), "TEST_TMPDIR": str(tmp_path), **env}
    result = subprocess.run(
        [sys.executable, str(SHIM), str(test_file)], env=environment, capture_output=True, text=True, timeout=60
    )
    return result, xml


def test_a_failing_test_fails_the_target_and_is_reported_in_xml(tmp_path: Path) -> None:
    result, xml = run_shim(tmp_path, SAMPLE)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    report = xml.read_text()
    assert 'name="test_fails"' in report
    assert "<failure" in report
    assert 'name="test_passes"' in report


def test_filter_selects_tests(tmp_path: Path) -> None:
    result, xml = run_shim(tmp_path, SAMPLE, TESTBRIDGE_TEST_ONLY="test_passes")
    assert result.returncode == 0, result.stdout
    assert 'name="test_fails"' not in xml.read_text()


def test_no_tests_collected_is_a_failure(tmp_path: Path) -> None:
    result, _ = run_shim(tmp_path, "x = 1\n")
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "collected no tests" in result.stderr
