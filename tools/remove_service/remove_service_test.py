"""//tools/remove_service on a scratch workspace with services made by //tools/new_service: what it removes,
what it keeps, and what it refuses (a service others call), with nothing changed on a refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from libs.processes.processes import runfile
from services.registry import parse
from tools.new_service.new_service import main as new_service
from tools.remove_service.remove_service import main, pruned_baseline

BASELINE = {
    "file": [
        {"name": "books/shared/v1/shared.proto"},
        {"name": "books/kept/v1/kept.proto", "dependency": ["books/shared/v1/shared.proto"]},
        {"name": "books/stock/v1/stock.proto", "dependency": ["books/shared/v1/shared.proto", "books/only/v1/o.proto"]},
        {"name": "books/only/v1/o.proto"},
    ]
}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A list with a gRPC service `stock` and a web service `shop` that calls it, made by //tools/new_service."""
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "services.bzl").write_text('"""A list."""\n\nSERVICES = [\n]\n')
    shutil.copy(runfile("ruff.toml"), tmp_path / "ruff.toml")
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto" / "api_baseline.json").write_text(json.dumps(BASELINE))
    assert new_service(["stock", "--workspace", str(tmp_path)]) == 0
    assert new_service(["shop", "--kind", "http", "--calls", "stock", "--workspace", str(tmp_path)]) == 0
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_callee_is_not_removed_while_it_is_called(workspace: Path, capsys) -> None:
    before = snapshot(workspace)
    assert main(["stock", "--workspace", str(workspace)]) == 2
    assert "shop calls stock: remove it first, or take it out of stock's `allow` rules" in capsys.readouterr().err
    assert snapshot(workspace) == before


def test_callers_then_callees_leave_an_empty_list_and_no_trace(workspace: Path) -> None:
    assert main(["shop", "--workspace", str(workspace)]) == 0
    registry = parse((workspace / "services/services.bzl").read_text())
    assert list(registry) == ["stock"]
    assert registry["stock"].callers == ()  # its rules no longer name the removed caller
    assert not (workspace / "services/shop").exists()
    assert main(["stock", "--workspace", str(workspace)]) == 0
    assert list(parse((workspace / "services/services.bzl").read_text())) == []
    assert not (workspace / "services/stock").exists()
    assert not (workspace / "proto/books/stock").exists()
    assert json.loads((workspace / "proto/api_baseline.json").read_text()) == {"file": []}  # no API is left


def test_an_api_something_else_uses_is_kept_and_said(workspace: Path, capsys) -> None:
    assert main(["shop", "--workspace", str(workspace)]) == 0
    (workspace / "tools").mkdir()
    (workspace / "tools" / "report.py").write_text("from books.stock.v1 import stock_pb2\n")
    assert main(["stock", "--workspace", str(workspace)]) == 0
    assert (workspace / "proto/books/stock").exists()
    assert "proto/books/stock/ stays: tools/report.py use it" in capsys.readouterr().out


def test_code_elsewhere_that_uses_the_service_is_named(workspace: Path, capsys) -> None:
    (workspace / "tests").mkdir()
    (workspace / "tests" / "shop_test.py").write_text("from services.shop.app import create_app\n")
    assert main(["shop", "--dry-run", "--workspace", str(workspace)]) == 0
    assert "remove or change tests/shop_test.py" in capsys.readouterr().out
    assert (workspace / "services/shop").exists()  # a dry run changes nothing


def test_an_unknown_service_is_refused_by_name(workspace: Path, capsys) -> None:
    assert main(["till", "--workspace", str(workspace)]) == 2
    assert "no service 'till' in services/services.bzl (there are stock, shop)" in capsys.readouterr().err


def test_the_baseline_keeps_what_the_remaining_apis_are_made_of() -> None:
    pruned = json.loads(pruned_baseline(json.dumps(BASELINE), ["kept"]))
    assert [file["name"] for file in pruned["file"]] == ["books/shared/v1/shared.proto", "books/kept/v1/kept.proto"]


def test_a_gateway_gets_a_new_service_and_never_blocks_its_removal(tmp_path: Path) -> None:
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "services.bzl").write_text('"""A list."""\n\nSERVICES = [\n]\n')
    shutil.copy(runfile("ruff.toml"), tmp_path / "ruff.toml")
    assert new_service(["api", "--kind", "http", "--workspace", str(tmp_path)]) == 0
    listing = tmp_path / "services" / "services.bzl"
    listing.write_text(
        listing.read_text().replace(
            '"description": "Api, a web service",', '"description": "Api, a web service",\n        "gateway": True,'
        )
    )
    assert parse(listing.read_text())["api"].gateway
    assert new_service(["stock", "--workspace", str(tmp_path)]) == 0
    assert parse(listing.read_text())["stock"].callers == ("api",)  # the gateway may call it: JSON at once
    assert main(["stock", "--workspace", str(tmp_path)]) == 0  # the gateway serves whatever allows it
    assert list(parse(listing.read_text())) == ["api"]
