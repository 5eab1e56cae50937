"""buf's breaking-change check catches what breaks clients, and names it: each test edits a copy of the API
the way a careless change would and expects buf's message; adding a field must pass.

(The gate itself is //proto:breaking_test, against the committed baseline; this shows what it stops.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from libs.processes.processes import runfile

BUF = "../buf/buf"  # in the runfiles
API = "testdata/library/v1/library.proto"  # libs/http's test API, where buf builds it


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUF_CACHE_DIR": str(cwd / ".cache")}
    return subprocess.run([str(runfile(BUF)), *args], cwd=cwd, capture_output=True, text=True, env=env, check=False)


def image(root: Path, edit: Callable[[str], str] | None, name: str) -> Path:
    """The API's sources (edited by `edit`) built into a buf image."""
    tree = root / name
    (tree / API).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(runfile("libs/http/testdata/library.proto"), tree / API)
    shutil.copy(runfile("proto/buf.yaml"), tree / "buf.yaml")
    if edit is not None:
        path = tree / API
        edited = edit(path.read_text())
        assert edited != path.read_text(), "the edit changed nothing"
        path.write_text(edited)
    built = buf("build", "-o", f"{name}.binpb", cwd=tree)
    assert built.returncode == 0, built.stderr
    return tree / f"{name}.binpb"


def breaking(tmp_path: Path, edit: Callable[[str], str]) -> subprocess.CompletedProcess:
    before, after = image(tmp_path, None, "before"), image(tmp_path, edit, "after")
    return buf(
        "breaking", str(after), "--against", str(before), "--config", str(runfile("proto/buf.yaml")), cwd=tmp_path
    )


LIMIT = "  int32 limit = 2;"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.replace(LIMIT, LIMIT.replace("= 2", "= 4")),
            'Previously present field "2" with name "limit" on message "FindBooksRequest" was deleted.',
        ),
        (
            lambda s: s.replace("  Format format = 3;\n}", "}"),
            'Previously present field "3" with name "format" on message "FindBooksRequest" was deleted.',
        ),
        (
            lambda s: s.replace(LIMIT, LIMIT.replace("int32", "string")),
            'Field "2" with name "limit" on message "FindBooksRequest" changed type from "int32" to "string".',
        ),
        (
            lambda s: s.replace("rpc FindBooks(", "rpc SearchBooks("),
            'Previously present RPC "FindBooks" on service "LibraryService" was deleted.',
        ),
        (
            lambda s: re.sub(r"  rpc FollowBooks\(.*?;\n", "", s, flags=re.S),
            'Previously present RPC "FollowBooks" on service "LibraryService" was deleted.',
        ),
    ],
    ids=["renumbered field", "removed field", "changed field type", "renamed RPC", "removed RPC"],
)
def test_a_change_that_breaks_clients_fails_with_buf_naming_it(tmp_path: Path, edit, message: str) -> None:
    result = breaking(tmp_path, edit)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout + result.stderr


def test_adding_a_field_passes(tmp_path: Path) -> None:
    added = "  Format format = 3;\n  // The reader's language, e.g. en-GB.\n  string locale = 4;\n}"
    result = breaking(tmp_path, lambda s: s.replace("  Format format = 3;\n}", added))
    assert result.returncode == 0, result.stdout + result.stderr
