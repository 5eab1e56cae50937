"""Creates a working service: `./bazelw run //tools/new_service -- NAME [--kind grpc|http] [--port P] ...`.

NAME is a lowercase DNS label (`order-history`); its Python package, Bazel package and proto package
use it with "-" turned into "_" (`services/order_history/`, `books.order_history.v1`), its environment
variables the upper-case form (`ORDER_HISTORY_PORT`), and its proto service the CamelCase form
(`OrderHistoryService`). Written, all at once or not at all, for `--kind grpc` (the default):

  proto/books/<package>/v1/<package>.proto   a unary and a server-streaming RPC, errors documented per RPC
  proto/books/<package>/v1/BUILD.bazel       proto_library → py_proto_library → py_grpc_library
  services/<package>/servicer.py             validation with per-field BadRequest, both handlers
  services/<package>/main.py                 the server on libs/runtime, flags with <PREFIX>_* variables
  services/<package>/BUILD.bazel             library, binary, image (+ .digest), :load, :push, tests
  services/<package>/servicer_test.py        unit tests of the handlers
  services/<package>/server_test.py          the server in-process over mTLS, by stub and by reflection
  services/services.bzl                      the new entry: ports, allow rules (who calls it: --callers)

and for `--kind http` (a web service, `--public` to serve it through the Ingress):

  services/<package>/app.py                  a page and a JSON API over every gRPC service it calls
  services/<package>/templates/index.html    the page (autoescaped)
  services/<package>/main.py                 served by libs/runtime/web.py, flags with <PREFIX>_* variables
  services/<package>/BUILD.bazel             library, binary, image (+ .digest), :load, :push, tests
  services/<package>/app_test.py             the app in-process: page, API, probes
  services/<package>/server_test.py          the process: page and probes on its port, bad flags, SIGTERM
  services/services.bzl                      the new entry, and the new service added to the `allow`
                                             rules of every service it calls (--calls)

Everything else follows from the list: //:dev starts it, //tools/certs mints its certificate, //k8s:render
deploys it (base objects, mTLS, certificate, autoscaling, network policy), the container and manifest
tests cover it. `--dry-run` prints what would be written and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import string
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.registry import Registry, RegistryError, dns_label_problem, package_of, parse
from tools.lint.ruff import RUFF
from tools.service_list.list_edit import LIST, ListEditError, add_caller, add_workspace_flag, insert_entry

TEMPLATES = Path(__file__).with_name("templates")
FILES = {
    "grpc": {
        "proto.tmpl": "proto/books/{package}/v1/{package}.proto",
        "proto_BUILD.tmpl": "proto/books/{package}/v1/BUILD.bazel",
        "servicer.py.tmpl": "services/{package}/servicer.py",
        "main.py.tmpl": "services/{package}/main.py",
        "BUILD.tmpl": "services/{package}/BUILD.bazel",
        "servicer_test.py.tmpl": "services/{package}/servicer_test.py",
        "server_test.py.tmpl": "services/{package}/server_test.py",
    },
    "http": {
        "app.py.tmpl": "services/{package}/app.py",
        "index.html.tmpl": "services/{package}/templates/index.html",
        "main.py.tmpl": "services/{package}/main.py",
        "BUILD.tmpl": "services/{package}/BUILD.bazel",
        "app_test.py.tmpl": "services/{package}/app_test.py",
        "server_test.py.tmpl": "services/{package}/server_test.py",
    },
}
FIRST_GRPC_PORT = 50051
FIRST_HTTP_PORT = 8080
# What --public publishes of a generated web service: its page and its API (templates/http/app.py.tmpl).
PUBLIC_PATHS = """
        "public": [
            "/",
            "/api",
        ],"""
FIRST_METRICS_PORT = 9090
LIMITS = {"max_text": 10_000, "max_top": 50, "max_words": 1_000}


class NewServiceError(Exception):
    """The service cannot be made as asked; the message says why (nothing was written)."""


@dataclass(frozen=True)
class Plan:
    """What to write: new files (path → text) and the new text of the list."""

    files: dict[Path, str]
    services_bzl: str
    entry: str


def camel_case(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def _free_pair(used: set[int], start: int) -> int:
    port = start
    while port in used or port + 1 in used:
        port += 2
    return port


def _free(used: set[int], start: int) -> int:
    port = start
    while port in used:
        port += 1
    return port


def check_name(name: str, registry: Registry, workspace: Path) -> str:
    """The Python package of a usable new name; raises NewServiceError otherwise."""
    problem = dns_label_problem(name)
    if problem:
        raise NewServiceError(f"{problem} (e.g. order-history, which becomes the Python package order_history)")
    if name in registry:
        raise NewServiceError(f"a service named {name!r} exists already in {LIST}")
    package = package_of(name)
    if keyword.iskeyword(package) or package in sys.stdlib_module_names:
        raise NewServiceError(f"{name!r} would be the Python package {package!r}, which shadows Python's own")
    for taken in (f"services/{package}", f"services/{package}.py", f"proto/books/{package}"):
        if (workspace / taken).exists():
            raise NewServiceError(f"{taken} exists already: pick another name or remove it")
    return package


def check_callers(callers: list[str], registry: Registry) -> None:
    unknown = [caller for caller in callers if caller not in registry]
    if unknown:
        raise NewServiceError(
            f"--callers {', '.join(unknown)}: not a service in {LIST} (there are {', '.join(registry)})"
        )


def choose_ports(port: int | None, metrics_port: int | None, registry: Registry) -> tuple[int, int, int]:
    """(gRPC, health, metrics): the given ones, checked, or the first free ones."""
    used = registry.used_ports()
    grpc_port = port if port is not None else _free_pair(set(used), FIRST_GRPC_PORT)
    metrics = (
        metrics_port if metrics_port is not None else _free(set(used) | {grpc_port, grpc_port + 1}, FIRST_METRICS_PORT)
    )
    wanted = {"--port": grpc_port, "--port + 1 (health)": grpc_port + 1, "--metrics-port": metrics}
    for flag, value in wanted.items():
        if not 1024 <= value <= 65535:
            raise NewServiceError(f"{flag} {value} is not a port from 1024 to 65535")
        if value in used:
            raise NewServiceError(f"{flag} {value} is already used by {used[value]}")
    if metrics in (grpc_port, grpc_port + 1):
        raise NewServiceError(f"--metrics-port {metrics} collides with the gRPC or health port")
    return grpc_port, grpc_port + 1, metrics


def check_callees(calls: list[str], registry: Registry) -> None:
    wrong = [name for name in calls if name not in registry or registry[name].kind != "grpc"]
    if wrong:
        grpc_services = [name for name, service in registry.items() if service.kind == "grpc"]
        raise NewServiceError(
            f"--calls {', '.join(wrong)}: not a gRPC service in {LIST} (there are {', '.join(grpc_services)})"
        )


def choose_http_port(port: int | None, registry: Registry) -> int:
    used = registry.used_ports()
    chosen = port if port is not None else _free(set(used), FIRST_HTTP_PORT)
    if not 1024 <= chosen <= 65535:
        raise NewServiceError(f"--port {chosen} is not a port from 1024 to 65535")
    if chosen in used:
        raise NewServiceError(f"--port {chosen} is already used by {used[chosen]}")
    return chosen


def _edited(edit: Callable[..., str], *args: str) -> str:
    try:
        return edit(*args)
    except ListEditError as error:
        raise NewServiceError(str(error)) from None


def plan(
    name: str,
    workspace: Path,
    port: int | None = None,
    metrics_port: int | None = None,
    callers: list[str] | None = None,
    description: str | None = None,
    kind: str = "grpc",
    public: bool = False,
    calls: list[str] | None = None,
) -> Plan:
    """Everything to write for service `name`, checked; raises NewServiceError before anything is written."""
    source = (workspace / LIST).read_text()
    try:
        registry = parse(source)
    except RegistryError as error:
        raise NewServiceError(f"fix the list first: {error}") from None
    package = check_name(name, registry, workspace)
    title = name.replace("-", " ").capitalize()
    values: dict[str, object] = {"name": name, "package": package, "prefix": package.upper(), "title": title}
    if kind == "grpc":
        if public or calls:
            raise NewServiceError("--public and --calls are for --kind http (a gRPC service is called: --callers)")
        # Every gateway of the list may call it too: its annotated methods are JSON over HTTP at once.
        callers = list(dict.fromkeys([*(callers or []), *registry.gateways()]))
        check_callers(callers, registry)
        grpc_port, health_port, metrics = choose_ports(port, metrics_port, registry)
        proto_package = f"books.{package}.v1"
        description = description or f"{title} over gRPC ({proto_package})"
        values |= {
            "service": f"{camel_case(name)}Service",
            "proto_package": proto_package,
            "port": grpc_port,
            "health_port": health_port,
            "metrics_port": metrics,
            "callers": json.dumps(callers),
            **LIMITS,
        }
    else:
        if callers or metrics_port is not None:
            raise NewServiceError("--callers and --metrics-port are for --kind grpc (a web service calls: --calls)")
        calls = list(dict.fromkeys(calls or []))
        check_callees(calls, registry)
        description = description or f"{title}, a web service"
        values |= {"port": choose_http_port(port, registry), "public": PUBLIC_PATHS if public else ""}
        for callee in calls:
            source = _edited(add_caller, source, callee, name)
    if not description.isprintable():
        raise NewServiceError("--description must be one line of printable text")
    values["description"] = json.dumps(description, ensure_ascii=False)
    entry = string.Template((TEMPLATES / kind / "entry.tmpl").read_text()).substitute(values)
    services_bzl = _edited(insert_entry, source, entry)
    try:
        parse(services_bzl)  # the list with the new entry must still hold together
    except RegistryError as error:
        raise NewServiceError(str(error)) from None
    files = {}
    for template, target in FILES[kind].items():
        path = workspace / target.format(package=package)
        text = string.Template((TEMPLATES / kind / template).read_text()).substitute(values)
        files[path] = python_style(text, path, workspace) if path.suffix == ".py" else text
    return Plan(files, services_bzl, entry)


def python_style(text: str, path: Path, workspace: Path) -> str:
    """`text` as `ruff check --fix` (import order) and `ruff format` leave it under the repository's ruff.toml:
    the names that fill the templates change line lengths and import order."""
    for command in (["check", "--fix", "--select", "I", "--quiet"], ["format", "--quiet"]):
        result = subprocess.run(
            [str(RUFF), *command, "--config", str(workspace / "ruff.toml"), "--stdin-filename", str(path), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise NewServiceError(f"ruff could not format {path}: {result.stderr.strip()}")
        text = result.stdout
    return text


def write(plan: Plan, workspace: Path) -> None:
    """Writes every file of `plan`, or none: each goes to a temporary name first, and only when all are
    written are they renamed into place, the list last."""
    staged: list[tuple[Path, Path]] = []
    made_dirs: list[Path] = []
    try:
        for path, text in [*plan.files.items(), (workspace / LIST, plan.services_bzl)]:
            for parent in reversed(path.parents):
                if not parent.exists():
                    parent.mkdir()
                    made_dirs.append(parent)
            temporary = path.with_name(f".{path.name}.new")
            temporary.write_text(text)
            staged.append((temporary, path))
    except OSError as error:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        for directory in reversed(made_dirs):
            directory.rmdir()
        raise NewServiceError(f"could not write {error.filename}: {error.strerror}; nothing was written") from None
    for temporary, path in staged:
        os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="lowercase DNS label, e.g. order-history")
    parser.add_argument("--kind", choices=("grpc", "http"), default="grpc", help="a gRPC service or a web service")
    parser.add_argument(
        "--port",
        type=int,
        help="gRPC port (health: the next one), default the first free pair from 50051; "
        "or HTTP port, default the first free one from 8080",
    )
    parser.add_argument("--metrics-port", type=int, help="Prometheus port; default: the first free one from 9090")
    parser.add_argument(
        "--callers",
        default="",
        help="grpc: comma-separated services allowed to call both RPCs under mTLS, besides the list's gateway "
        "(which serves them as JSON over HTTP); default: the gateway alone",
    )
    parser.add_argument(
        "--calls",
        default="",
        help="http: comma-separated gRPC services it calls (it is added to their allow rules)",
    )
    parser.add_argument(
        "--public", action="store_true", help="http: its page (/) and API (/api) served to the world by the Ingress"
    )
    parser.add_argument("--description", help="one line for the image label (default: '<Name> over gRPC (...)')")
    parser.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    add_workspace_flag(parser, "write into")
    args = parser.parse_args(argv)
    callers = [caller.strip() for caller in args.callers.split(",") if caller.strip()]
    calls = [callee.strip() for callee in args.calls.split(",") if callee.strip()]
    try:
        made = plan(
            args.name,
            args.workspace,
            args.port,
            args.metrics_port,
            callers,
            args.description,
            kind=args.kind,
            public=args.public,
            calls=calls,
        )
        if not args.dry_run:
            write(made, args.workspace)
    except NewServiceError as error:
        print(f"new_service: {error}", file=sys.stderr)
        return 2
    verb = "would write" if args.dry_run else "wrote"
    for path in [*made.files, args.workspace / LIST]:
        print(f"{verb} {path.relative_to(args.workspace)}")
    print(f"{'would add' if args.dry_run else 'added'} to {LIST}:\n{made.entry}", end="")
    if not args.dry_run:
        print(
            "next: ./bazelw test //...   (the whole suite: //:dev, the images, the manifests and monitoring cover it)"
        )
        print("      ./bazelw run //:dev   (starts it with the others)")
        if args.kind == "grpc":
            print("      ./bazelw run //proto:accept_api_changes   (when its API is released: guards it from breaks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
