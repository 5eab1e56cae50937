"""The lock file pins, with hashes, every requirement named in requirements.in."""

from __future__ import annotations

import re
from pathlib import Path

from tools.pip.generate_build import locked_names, normalize

ROOT = Path(__file__).parents[2]


def direct_requirements() -> list[str]:
    names = []
    for line in (ROOT / "requirements.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(normalize(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]))
    return names


def test_every_direct_requirement_is_locked() -> None:
    locked = locked_names(ROOT / "requirements_lock.txt")
    missing = [name for name in direct_requirements() if name not in locked]
    assert not missing, f"run ./bazelw run //:requirements.update; not locked: {missing}"


def test_every_pin_has_a_hash_and_nothing_is_machine_specific() -> None:
    text = (ROOT / "requirements_lock.txt").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    pins = [block for block in blocks if re.match(r"[A-Za-z0-9][\w.-]*==", block)]
    assert len(pins) >= len(direct_requirements())
    for pin in pins:
        assert "--hash=sha256:" in pin, pin.splitlines()[0]
    assert "--find-links" not in text
    assert "--index-url" not in text
    assert "file://" not in text


def test_normalize_matches_the_requirement_helper() -> None:
    assert normalize("grpcio-tools") == "grpcio_tools"
    assert normalize("Jinja2") == "jinja2"
    assert normalize("zope.interface") == "zope_interface"
