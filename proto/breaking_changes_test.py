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
API = "books/shelf/v1/shelf.proto"  # where proto/testdata/shelf.proto goes in the tree buf builds


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUF_CACHE_DIR": str(cwd / ".cache")}
    return subprocess.run([str(runfile(BUF)), *args], cwd=cwd, capture_output=True, text=True, env=env, check=False)


def image(root: Path, edit: Callable[[str], str] | None, name: str) -> Path:
    """The API's sources (edited by `edit`) built into a buf image."""
    tree = root / name
    (tree / API).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(runfile("proto/testdata/shelf.proto"), tree / API)
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


READER_ID = "  int64 reader_id = 1;\n  // The shelf to list"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.replace(READER_ID, READER_ID.replace("= 1", "= 4")),
            'Previously present field "1" with name "reader_id" on message "ListBooksRequest" was deleted.',
        ),
        (
            lambda s: s.replace("  int32 max_results = 3;\n}", "}"),
            'Previously present field "3" with name "max_results" on message "ListBooksRequest" was deleted.',
        ),
        (
            lambda s: s.replace(READER_ID, READER_ID.replace("int64", "string")),
            'Field "1" with name "reader_id" on message "ListBooksRequest" changed type from "int64" to "string".',
        ),
        (
            lambda s: s.replace("rpc ListBooks(", "rpc FindBooks("),
            'Previously present RPC "ListBooks" on service "ShelfService" was deleted.',
        ),
        (
            lambda s: re.sub(r"  rpc ListEach\(.*?;\n", "", s, flags=re.S),
            'Previously present RPC "ListEach" on service "ShelfService" was deleted.',
        ),
    ],
    ids=["renumbered field", "removed field", "changed field type", "renamed RPC", "removed RPC"],
)
def test_a_change_that_breaks_clients_fails_with_buf_naming_it(tmp_path: Path, edit, message: str) -> None:
    result = breaking(tmp_path, edit)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout + result.stderr


def test_adding_a_field_passes(tmp_path: Path) -> None:
    added = "  int32 max_results = 3;\n  // The reader's language, e.g. en-GB.\n  string locale = 4;\n}"
    result = breaking(tmp_path, lambda s: s.replace("  int32 max_results = 3;\n}", added))
    assert result.returncode == 0, result.stdout + result.stderr
