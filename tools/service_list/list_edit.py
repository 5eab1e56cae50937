"""Edits of services/services.bzl as text, so that its comments and buildifier's format survive: add an
entry, remove one, add or remove a caller in the `allow` rules of the services it calls. Each finds its
place with Python's parser (the list is a plain literal, services/registry.py) and rewrites only that."""

from __future__ import annotations

import argparse
import ast
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

LIST = "services/services.bzl"


def add_workspace_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """--workspace: the repository a tool changes, by default where `bazel run` was started."""
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")),
        help=f"the repository to {what} (default: where `bazel run` was started)",
    )


class ListEditError(ValueError):
    """The list's text is not in the shape these edits need; the message says what."""


def _services(source: str) -> ast.List:
    for statement in ast.parse(source).body:
        targets = [getattr(t, "id", None) for t in getattr(statement, "targets", [])]
        if isinstance(statement, ast.Assign) and targets == ["SERVICES"] and isinstance(statement.value, ast.List):
            return statement.value
    raise ListEditError(f"{LIST} has no SERVICES list")


def _entries(source: str) -> Iterator[tuple[str, ast.Dict, dict[str, ast.expr]]]:
    """(name, node, fields) of every entry."""
    for entry in _services(source).elts:
        if isinstance(entry, ast.Dict):
            fields = {ast.literal_eval(key): value for key, value in zip(entry.keys, entry.values, strict=True) if key}
            yield ast.literal_eval(fields["name"]), entry, fields


def _replace(source: str, edits: list[tuple[ast.expr, str]]) -> str:
    """`source` with each node's text replaced (positions are of UTF-8 bytes, as Python's parser gives them)."""
    data = source.encode()
    starts = [0]
    for line in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    spans = []
    for node, text in edits:
        end = starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[operator]
        spans.append((starts[node.lineno - 1] + node.col_offset, end, text.encode()))
    for start, end, replacement in sorted(spans, reverse=True):
        data = data[:start] + replacement + data[end:]
    return data.decode()


def insert_entry(source: str, entry: str) -> str:
    """`source` with `entry` (its lines, buildifier-formatted) appended to the SERVICES list."""
    lines = source.splitlines(keepends=True)
    closing = _services(source).end_lineno - 1  # type: ignore[operator]
    if lines[closing].strip() != "]":
        raise ListEditError(f"{LIST}: SERVICES must end with ']' on a line of its own (buildifier's format)")
    return "".join(lines[:closing]) + entry + "".join(lines[closing:])


def remove_entry(source: str, name: str) -> str:
    """`source` without the entry of service `name` (its whole lines, from `{` to `},`)."""
    for found, node, _ in _entries(source):
        if found == name:
            lines = source.splitlines(keepends=True)
            return "".join(lines[: node.lineno - 1] + lines[node.end_lineno :])
    raise ListEditError(f"{LIST} has no service {name!r}")


def _edit_rules(source: str, callee: str | None, change: Callable[[list[str]], list[str]]) -> str:
    edits: list[tuple[ast.expr, str]] = []
    for name, _, fields in _entries(source):
        allow = fields.get("allow")
        if (callee is None or name == callee) and isinstance(allow, ast.Dict):
            for rule in allow.values:
                names = ast.literal_eval(rule)
                if change(names) != names:
                    edits.append((rule, json.dumps(change(names))))
    return _replace(source, edits)


def add_caller(source: str, callee: str, caller: str) -> str:
    """`source` with `caller` added to every method's list in `callee`'s `allow`: the rules that let it
    call, from which its address flags, certificates and network policy follow."""
    return _edit_rules(source, callee, lambda names: names if caller in names else [*names, caller])


def remove_caller(source: str, caller: str) -> str:
    """`source` with `caller` taken out of every `allow` rule of the list."""
    return _edit_rules(source, None, lambda names: [name for name in names if name != caller])
