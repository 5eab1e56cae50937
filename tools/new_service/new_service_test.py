"""//tools/new_service on a scratch copy of the list: bad input refused with nothing written, --dry-run writes
nothing, and what is written is consistent (names, ports, callers) and lands in the list.

The end-to-end proof, that a generated service builds and passes its tests, the manifests and the container
tests, is in .ci/run (it generates one into a throwaway copy of the repository and runs them there).
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from libs.processes.processes import runfile
from services.registry import parse
from tools.new_service import new_service
from tools.new_service.new_service import NewServiceError, main, plan

# A list of its own (the repository's may lose its examples): a gRPC service and a public web app calling it.
LIST = """SERVICES = [
    {
        "name": "stock",
        "kind": "grpc",
        "ports": {
            "grpc": 50051,
            "health": 50052,
            "metrics": 9090,
        },
        "description": "Stock",
        "grpc_service": "shop.stock.v1.StockService",
        "allow": {
            "Get": ["shop"],
            "Put": ["shop"],
        },
    },
    {
        "name": "shop",
        "kind": "http",
        "ports": {
            "http": 8080,
        },
        "description": "Shop",
        "public": [
            "/",
            "/api",
        ],
    },
]
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "services.bzl").write_text(LIST)
    shutil.copy(runfile("ruff.toml"), tmp_path / "ruff.toml")
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_new_service_is_written_with_consistent_names_and_lands_in_the_list(workspace: Path, capsys) -> None:
    argv = ["loyalty-points", "--port", "50461", "--metrics-port", "9461", "--callers", "shop"]
    assert main([*argv, "--workspace", str(workspace)]) == 0
    registry = parse((workspace / "services/services.bzl").read_text())
    entry = registry["loyalty-points"]
    assert entry.package == "loyalty_points"
    assert entry.ports == {"grpc": 50461, "health": 50462, "metrics": 9461}
    assert entry.grpc_service == "books.loyalty_points.v1.LoyaltyPointsService"
    assert dict(entry.allow) == {"CountWords": ("shop",), "SplitWords": ("shop",)}
    assert "loyalty-points" in registry.calls("shop")
    proto = (workspace / "proto/books/loyalty_points/v1/loyalty_points.proto").read_text()
    assert "package books.loyalty_points.v1;" in proto
    assert "service LoyaltyPointsService {" in proto
    assert proto.count("// Errors") == 2  # documented per RPC
    for path in (workspace / "services/loyalty_points").glob("*.py"):
        ast.parse(path.read_text(), str(path))  # every file is Python
        assert "${" not in path.read_text(), path
    build = (workspace / "services/loyalty_points/BUILD.bazel").read_text()
    assert 'service = "loyalty-points"' in build
    assert 'name = "loyalty_points"' in build
    printed = capsys.readouterr().out
    assert "wrote services/loyalty_points/main.py" in printed
    assert "wrote services/services.bzl" in printed


def test_dry_run_lists_the_files_and_writes_nothing(workspace: Path, capsys) -> None:
    before = snapshot(workspace)
    assert main(["shelf", "--dry-run", "--workspace", str(workspace)]) == 0
    assert snapshot(workspace) == before
    printed = capsys.readouterr().out
    for path in new_service.FILES["grpc"].values():
        assert f"would write {path.format(package='shelf')}" in printed
    assert "would add to services/services.bzl" in printed


def test_default_ports_are_the_first_free_ones(workspace: Path) -> None:
    made = plan("shelf", workspace)
    entry = parse(made.services_bzl)["shelf"]
    taken = parse((workspace / "services/services.bzl").read_text()).used_ports()
    assert entry.ports["grpc"] >= 50051
    assert not set(entry.ports.values()) & set(taken)
    assert entry.ports["health"] == entry.ports["grpc"] + 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stock"], "a service named 'stock' exists already"),
        (["Order_History"], "is not a lowercase DNS label"),
        (["order--history"], "is not a lowercase DNS label"),
        (["x-"], "is not a lowercase DNS label"),
        (["9lives"], "is not a lowercase DNS label"),
        (["import"], "shadows Python's own"),
        (["json"], "shadows Python's own"),
        (["shelf", "--port", "50051"], "--port 50051 is already used by stock (grpc)"),
        (["shelf", "--port", "50050"], "--port + 1 (health) 50051 is already used by stock (grpc)"),
        (["shelf", "--metrics-port", "8080"], "--metrics-port 8080 is already used by shop (http)"),
        (["shelf", "--port", "80"], "--port 80 is not a port from 1024 to 65535"),
        (["shelf", "--callers", "shop,billing"], "--callers billing: not a service"),
        (["shelf", "--callers", "shelf"], "--callers shelf: not a service"),
        (["shelf", "--description", "two\nlines"], "--description must be one line"),
        (["shelf", "--public"], "--public and --calls are for --kind http"),
        (["till", "--kind", "http", "--callers", "shop"], "--callers and --metrics-port are for --kind grpc"),
        (["till", "--kind", "http", "--calls", "shop"], "--calls shop: not a gRPC service"),
        (["till", "--kind", "http", "--port", "8080"], "--port 8080 is already used by shop (http)"),
        (["till", "--kind", "http", "--public"], "public path '/' is already shop's"),
    ],
)
def test_bad_input_gets_a_clear_error_and_nothing_is_written(
    workspace: Path, argv: list[str], message: str, capsys
) -> None:
    before = snapshot(workspace)
    assert main([*argv, "--workspace", str(workspace)]) == 2
    assert message in capsys.readouterr().err
    assert snapshot(workspace) == before


def test_an_existing_package_directory_is_not_overwritten(workspace: Path) -> None:
    (workspace / "services" / "shelf").mkdir()
    with pytest.raises(NewServiceError, match="services/shelf exists already"):
        plan("shelf", workspace)


def test_a_failed_write_leaves_nothing_behind(workspace: Path) -> None:
    made = plan("shelf", workspace)
    before = snapshot(workspace)
    (workspace / "proto").write_text("a file where a directory must go")
    with pytest.raises(NewServiceError, match="nothing was written"):
        new_service.write(made, workspace)
    (workspace / "proto").unlink()
    assert snapshot(workspace) == before
    assert not (workspace / "services" / "shelf").exists()


def test_a_web_service_is_written_and_wired_to_the_services_it_calls(workspace: Path, capsys) -> None:
    assert main(["shop-front", "--kind", "http", "--calls", "stock", "--workspace", str(workspace)]) == 0
    registry = parse((workspace / "services/services.bzl").read_text())
    entry = registry["shop-front"]
    assert (entry.kind, entry.ports, entry.public) == ("http", {"http": 8081}, ())
    assert registry.calls("shop-front") == ("stock",)
    assert all("shop-front" in callers for callers in registry["stock"].allow.values())
    assert registry.calls("shop") == ("stock",)  # the other callers keep their rules
    written = {str(path.relative_to(workspace)) for path in (workspace / "services/shop_front").rglob("*")}
    assert {"services/shop_front/app.py", "services/shop_front/templates/index.html"} <= written
    for path in (workspace / "services/shop_front").glob("*.py"):
        ast.parse(path.read_text(), str(path))
        assert "${" not in path.read_text(), path
    assert 'callee_proto_libraries("shop-front")' in (workspace / "services/shop_front/BUILD.bazel").read_text()
    assert "proto/" not in capsys.readouterr().out  # a web service has no API of its own


def test_a_public_web_service_gets_its_page_and_api_published(workspace: Path) -> None:
    source = (workspace / "services/services.bzl").read_text()
    unpublished = re.sub(r'\n *"public": \[[^\]]*\],', "", source)  # no path is taken
    (workspace / "services/services.bzl").write_text(unpublished)
    made = plan("shop-front", workspace, kind="http", public=True)
    assert parse(made.services_bzl)["shop-front"].public == ("/", "/api")
