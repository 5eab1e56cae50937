"""Removes a service: `./bazelw run //tools/remove_service -- NAME [--dry-run]`.

What goes, all at once or not at all:

  services/services.bzl            its entry, and its name from the `allow` rules of the services it calls
  services/<package>/              its code, tests and image
  proto/books/<package>/           its API, unless a file outside it still imports or depends on it (then
                                   kept, and said)
  proto/api_baseline.json          the released API keeps only what the remaining services' APIs are made
                                   of: removing a service is a deliberate break of its API (buf breaking
                                   would refuse it otherwise)

Everything else that knows the services reads the list (//:dev, certificates, the Kubernetes objects,
monitoring, the tests of every service). It refuses, naming them, while other services call it: remove
those first (or take it out of their wiring), so that no caller is left without its callee.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from services.registry import Registry, RegistryError, parse
from tools.service_list.list_edit import LIST, ListEditError, add_workspace_flag, remove_caller, remove_entry

BASELINE = "proto/api_baseline.json"
SEARCHED = (".py", ".proto", ".bzl", ".bazel")  # where a dependency on a proto is written


class RemoveServiceError(Exception):
    """The service cannot be removed as asked; the message says why (nothing was changed)."""


@dataclass(frozen=True)
class Removal:
    """What to change: the list's new text, the directories to delete, the new baseline (None: unchanged);
    why a proto directory is kept, and the files that still use the service's code (its own tests elsewhere)."""

    services_bzl: str
    directories: list[Path]
    baseline: str | None
    kept: list[str]
    leftovers: list[str]


def check(name: str, registry: Registry) -> None:
    if name not in registry:
        raise RemoveServiceError(f"no service {name!r} in {LIST} (there are {', '.join(registry)})")
    # A gateway calls whatever allows it (it serves their JSON): it is never left without a callee.
    callers = [caller for caller in registry[name].callers if not registry[caller].gateway]
    if callers:
        them = "it" if len(callers) == 1 else "them"
        raise RemoveServiceError(
            f"{', '.join(callers)} call{'s' if len(callers) == 1 else ''} {name}: remove {them} first, or take "
            f"{them} out of {name}'s `allow` rules in {LIST}, so that no caller is left without its callee"
        )


def users(workspace: Path, marks: tuple[str, ...], removed: list[Path]) -> list[str]:
    """Files outside `removed` (and but the list) whose text has one of `marks`: an import, a label, a path."""
    found = []
    for root, directories, files in os.walk(workspace):
        directories[:] = [d for d in directories if not d.startswith((".", "bazel-")) and d != "node_modules"]
        for file in files:
            path = Path(root) / file
            if path.suffix not in SEARCHED and path.name != "BUILD.bazel" or path == workspace / LIST:
                continue
            if any(directory in path.parents for directory in removed):
                continue
            if any(mark in path.read_text(errors="replace") for mark in marks):
                found.append(str(path.relative_to(workspace)))
    return sorted(found)


def pruned_baseline(text: str, packages: list[str]) -> str:
    """The baseline (a FileDescriptorSet as JSON) with only what the APIs of `packages` (the gRPC services
    that stay) are made of: their files and every file they import, directly or not."""
    files = {file["name"]: file for file in json.loads(text)["file"]}
    wanted = [name for name in files if any(name.startswith(f"books/{package}/") for package in packages)]
    kept: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name not in kept and name in files:
            kept.add(name)
            wanted += files[name].get("dependency", [])
    return json.dumps({"file": [file for name, file in files.items() if name in kept]}, indent=1) + "\n"


def plan(name: str, workspace: Path) -> Removal:
    """Everything to change to remove `name`, checked; raises RemoveServiceError before anything changes."""
    source = (workspace / LIST).read_text()
    try:
        registry = parse(source)
    except RegistryError as error:
        raise RemoveServiceError(f"fix the list first: {error}") from None
    check(name, registry)
    service = registry[name]
    try:
        services_bzl = remove_entry(remove_caller(source, name), name)
        parse(services_bzl)
    except (ListEditError, RegistryError) as error:
        raise RemoveServiceError(str(error)) from None
    directories = [workspace / "services" / service.package]
    kept, baseline = [], None
    proto = workspace / "proto" / "books" / service.package
    if service.kind == "grpc" and (workspace / BASELINE).exists():
        # Its API leaves the released one (//proto:api is the services' APIs) even if its files stay.
        staying = [s.package for s in registry.values() if s.kind == "grpc" and s.name != name]
        baseline = pruned_baseline((workspace / BASELINE).read_text(), staying)
    if service.kind == "grpc" and proto.exists():
        marks = (f"books/{service.package}/", f"//proto/books/{service.package}", f"books.{service.package}.")
        proto_users = users(workspace, marks, [*directories, proto])
        if proto_users:
            kept.append(f"proto/books/{service.package}/ stays: {', '.join(proto_users)} use it")
        else:
            directories.append(proto)
    code = (f"//services/{service.package}", f"services.{service.package}", f"services/{service.package}/")
    leftovers = users(workspace, code, directories)
    return Removal(services_bzl, [d for d in directories if d.exists()], baseline, kept, leftovers)


def apply(removal: Removal, workspace: Path) -> None:
    """Writes the list and the baseline (each through a temporary file), then deletes the directories."""
    writes = [(workspace / LIST, removal.services_bzl)]
    if removal.baseline is not None:
        writes.append((workspace / BASELINE, removal.baseline))
    for path, text in writes:
        temporary = path.with_name(f".{path.name}.new")
        temporary.write_text(text)
    for path, _ in writes:
        os.replace(path.with_name(f".{path.name}.new"), path)
    for directory in removal.directories:
        shutil.rmtree(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the service's name in services/services.bzl")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    add_workspace_flag(parser, "change")
    args = parser.parse_args(argv)
    try:
        removal = plan(args.name, args.workspace)
    except RemoveServiceError as error:
        print(f"remove_service: {error}", file=sys.stderr)
        return 2
    if not args.dry_run:
        apply(removal, args.workspace)
    verb = "would" if args.dry_run else ""
    print(f"{verb or 'removed'} {'remove ' if verb else ''}{args.name} from {LIST} and its callees' allow rules")
    for directory in removal.directories:
        print(f"{'would delete' if verb else 'deleted'} {directory.relative_to(args.workspace)}/")
    if removal.baseline is not None:
        print(f"{'would drop' if verb else 'dropped'} its API from {BASELINE} (a deliberate break: review it)")
    for reason in removal.kept:
        print(reason)
    if removal.leftovers:
        print(f"still using its code (its own tests elsewhere, say): remove or change {', '.join(removal.leftovers)}")
    if not args.dry_run:
        print("next: ./bazelw test //...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
