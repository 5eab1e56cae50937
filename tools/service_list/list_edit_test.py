"""Edits of the list keep everything they do not touch, to the byte, and the result still parses."""

from __future__ import annotations

import pytest

from libs.processes.processes import runfile
from services.registry import parse
from tools.service_list.list_edit import ListEditError, add_caller, insert_entry, remove_caller, remove_entry

SOURCE = '''"""A list."""

SERVICES = [
    {
        "name": "stock",
        "kind": "grpc",
        "ports": {"grpc": 50100, "health": 50101, "metrics": 9100},
        "description": "Stock — of books",  # not ASCII: positions are in bytes
        "grpc_service": "shop.v1.StockService",
        "allow": {
            "Get": ["shop"],
            "Put": [],
        },
    },
    {
        "name": "shop",
        "kind": "http",
        "ports": {"http": 8100},
        "description": "Shop",
    },
]
'''


def test_a_caller_is_added_to_every_rule_of_its_callee_once() -> None:
    edited = add_caller(SOURCE, "stock", "till")
    assert '"Get": ["shop", "till"],' in edited
    assert '"Put": ["till"],' in edited
    assert add_caller(edited, "stock", "till") == edited
    assert edited.replace('["shop", "till"]', '["shop"]').replace('["till"]', "[]") == SOURCE


def test_a_caller_is_removed_from_every_rule() -> None:
    edited = remove_caller(SOURCE, "shop")
    assert '"Get": [],' in edited
    assert edited.replace('"Get": [],', '"Get": ["shop"],') == SOURCE


def test_an_entry_is_removed_with_its_lines_and_nothing_else() -> None:
    uncalled = remove_caller(SOURCE, "shop")
    shop = SOURCE[SOURCE.index('    {\n        "name": "shop"') : SOURCE.index("]\n")]
    without = remove_entry(uncalled, "shop")
    assert list(parse(without)) == ["stock"]
    assert without == uncalled.replace(shop, "")
    assert insert_entry(without, shop) == uncalled
    with pytest.raises(ListEditError, match="no service 'till'"):
        remove_entry(SOURCE, "till")


def test_the_repositorys_list_survives_every_edit() -> None:
    source = runfile("services/services.bzl").read_text()
    registry = parse(source)
    for name in registry:
        for caller in registry[name].callers:
            assert parse(remove_caller(source, caller))
        for other in registry:
            if other != name:
                assert other in parse(add_caller(source, name, other))[name].callers or not registry[name].allow
    for name in reversed([service.name for service in registry.start_order()]):  # callers first
        source = remove_entry(remove_caller(source, name), name)
        assert name not in parse(source)
    assert list(parse(source)) == []
