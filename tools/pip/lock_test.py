"""Each lock file pins, with hashes, every requirement named in its requirements.in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.pip.generate_build import locked_names, normalize

ROOT = Path(__file__).parents[2]
# (requirements.in, its lock, the target that re-locks it): the monorepo's, and each tool's of its own.
LOCKS = [
    ("requirements.in", "requirements_lock.txt", "//:requirements.update"),
    ("tools/checkov/requirements.in", "tools/checkov/requirements_lock.txt", "//tools/checkov:requirements.update"),
]


def direct_requirements(requirements_in: str) -> list[str]:
    names = []
    for line in (ROOT / requirements_in).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(normalize(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]))
    return names


@pytest.mark.parametrize(("requirements_in", "lock", "update"), LOCKS)
def test_every_direct_requirement_is_locked(requirements_in: str, lock: str, update: str) -> None:
    locked = locked_names(ROOT / lock)
    missing = [name for name in direct_requirements(requirements_in) if name not in locked]
    assert not missing, f"run ./bazelw run {update}; not locked: {missing}"
    assert f"#    ./bazelw run {update}\n" in (ROOT / lock).read_text()  # the header says how to re-lock it


@pytest.mark.parametrize(("requirements_in", "lock", "update"), LOCKS)
def test_every_pin_has_a_hash_and_nothing_is_machine_specific(requirements_in: str, lock: str, update: str) -> None:
    text = (ROOT / lock).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    pins = [block for block in blocks if re.match(r"[A-Za-z0-9][\w.-]*==", block)]
    assert len(pins) >= len(direct_requirements(requirements_in))
    for pin in pins:
        assert "--hash=sha256:" in pin, pin.splitlines()[0]
    assert "--find-links" not in text
    assert "--index-url" not in text
    assert "file://" not in text


def test_normalize_matches_the_requirement_helper() -> None:
    assert normalize("grpcio-tools") == "grpcio_tools"
    assert normalize("Jinja2") == "jinja2"
    assert normalize("zope.interface") == "zope_interface"
