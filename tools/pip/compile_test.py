"""The lock step's arm64 check: which wheel files an arm64 image can install, and the distributions whose
locked files include none (PyPI's simple index stood in for by a page of the same shape)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tools.pip import compile as lock_step


@pytest.mark.parametrize(
    ("filename", "installable"),
    [
        ("grpcio-1.85.3-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.whl", True),
        ("protobuf-7.36.2-cp39-abi3-manylinux2014_aarch64.whl", True),
        ("six-1.17.0-py2.py3-none-any.whl", True),
        ("grpcio-1.85.3-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", False),
        ("grpcio-1.85.3-cp311-cp311-musllinux_1_2_aarch64.whl", False),  # the images run glibc
        ("grpcio-1.85.3-cp312-cp312-manylinux2014_aarch64.whl", False),
        ("grpcio-1.85.3.tar.gz", False),  # the lock installs wheels only
    ],
)
def test_which_files_an_arm64_image_installs(filename: str, installable: bool) -> None:
    assert lock_step.arm64_wheel(filename) is installable


def test_a_locked_version_whose_files_have_no_arm64_wheel_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x86, arm, pure = "a" * 64, "b" * 64, "c" * 64
    pages = {
        "https://pypi.org/simple/fast/": f'<a href="f/fast-1.0-cp311-cp311-manylinux2014_x86_64.whl#sha256={x86}">'
        f"fast-1.0-cp311-cp311-manylinux2014_x86_64.whl</a>"
        f'<a href="f/fast-1.0-cp311-cp311-manylinux2014_aarch64.whl#sha256={arm}">'
        f"fast-1.0-cp311-cp311-manylinux2014_aarch64.whl</a>",
        "https://pypi.org/simple/pure/": f'<a href="p/pure-2.0-py3-none-any.whl#sha256={pure}">'
        "pure-2.0-py3-none-any.whl</a>",
    }
    monkeypatch.setattr(lock_step.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(pages[url].encode()))
    lock = tmp_path / "requirements_lock.txt"
    lock.write_text(
        f"fast==1.0 \\\n    --hash=sha256:{x86}\n    # via -r requirements.in\npure==2.0 \\\n    --hash=sha256:{pure}\n"
    )
    assert lock_step.without_arm64_wheel(str(lock)) == ["fast==1.0"]  # its aarch64 wheel is not among the locked
    lock.write_text(f"fast==1.0 \\\n    --hash=sha256:{x86} \\\n    --hash=sha256:{arm}\n")
    assert lock_step.without_arm64_wheel(str(lock)) == []
