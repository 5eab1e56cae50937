"""The list of services (services/services.bzl), read as Python: names, kinds, ports and who calls whom.

services.bzl is the one place these facts live; Bazel loads it, and this module reads the same file as a
literal (no Bazel needed, so editors, tools and the services themselves can use it). Everything a
deployment needs to know about a service is derived here from its entry:

    from services.registry import REGISTRY
    recommendations = REGISTRY["recommendations"]
    recommendations.port, recommendations.env_prefix, recommendations.callers
    REGISTRY.calls("marketplace")      # ("recommendations",): the services it talks to
    REGISTRY.start_order()             # callees before their callers
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

LIST_FILE = Path(__file__).with_name("services.bzl")
KINDS = {"grpc": ("grpc", "health", "metrics"), "http": ("http",)}
"""Each kind's ports, by role; the first one is where the service is called."""
IMAGE_PREFIX = "online-books"
_DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
_PROTO_SERVICE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+\.[A-Z]\w*$")
_REQUIRED = {"name", "kind", "ports", "description"}
_OPTIONAL = {"grpc_service", "allow", "public", "settings", "slo", "gateway", "serving"}
SERVING = ("aio", "threads")
"""How a gRPC service's calls are served (libs/runtime/server.py's SERVING)."""


class RegistryError(ValueError):
    """The list of services is malformed; the message names the entry and the field."""


def dns_label_problem(name: str) -> str | None:
    """Why `name` cannot name a service, or None. At most 40 characters: room for '-tls' suffixes and the
    '.<namespace>.svc.cluster.local' names in certificates."""
    if not _DNS_LABEL.match(name) or "--" in name:
        return (
            f"{name!r} is not a lowercase DNS label: letters, digits and single '-', starting with a letter,"
            " not ending with '-', at most 40 characters"
        )
    return None


def package_of(name: str) -> str:
    """The Python package (and Bazel package below services/) of a service: 'order-history' → 'order_history'."""
    return name.replace("-", "_")


@dataclass(frozen=True)
class Slo:
    """A service's objectives: `availability_percent` of its calls without a server-side error, and
    `latency_percent` of them answered within `latency_ms` (a bucket of its latency histogram)."""

    availability_percent: float = 99.9
    latency_percent: float = 99.0
    latency_ms: int = 250

    @property
    def availability_budget(self) -> float:
        """The share of calls that may fail server-side: 99.9 % → 0.001."""
        return round(1 - self.availability_percent / 100, 9)

    @property
    def latency_budget(self) -> float:
        """The share of calls that may be slower than `latency_ms`."""
        return round(1 - self.latency_percent / 100, 9)

    @property
    def latency_seconds(self) -> float:
        return self.latency_ms / 1000


SLO_DEFAULTS = {"grpc": Slo(latency_ms=250), "http": Slo(latency_ms=500)}
"""A service's objectives where its entry has no `slo`, or for the fields its `slo` leaves out."""


@dataclass(frozen=True)
class Service:
    """One entry of services.bzl, with what follows from it."""

    name: str
    kind: str
    ports: Mapping[str, int]
    description: str
    grpc_service: str = ""
    allow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    public: tuple[str, ...] = ()
    settings: Mapping[str, str] = field(default_factory=dict)
    slo: Slo = field(default_factory=Slo)
    gateway: bool = False
    serving: str = "aio"

    @property
    def package(self) -> str:
        return package_of(self.name)

    @property
    def env_prefix(self) -> str:
        """Prefix of the service's environment variables: ORDER_HISTORY_PORT, ORDER_HISTORY_TLS_CERT, ..."""
        return self.package.upper()

    @property
    def processes_variable(self) -> str:
        """The variable saying how many serving processes it runs (libs/runtime's --processes, for every
        kind); the Kubernetes templates set it per CPU."""
        return f"{self.env_prefix}_PROCESSES"

    @property
    def port(self) -> int:
        """Where callers reach it: the gRPC port, or the HTTP port of a web app."""
        return self.ports[KINDS[self.kind][0]]

    @property
    def binary(self) -> str:
        """The workspace path of its py_binary (a runfile of anything that depends on it)."""
        return f"services/{self.package}/{self.package}"

    @property
    def image(self) -> str:
        """The workspace path of its OCI image target (services/<package>:image)."""
        return f"services/{self.package}/image"

    @property
    def image_index(self) -> str:
        """The workspace path of its image index target (amd64 and arm64; what deployments pin)."""
        return f"services/{self.package}/image_index"

    @property
    def image_archive(self) -> str:
        """The workspace path of the archive `podman load` takes (in the runfiles of services/<package>:load)."""
        return f"services/{self.package}/load/tarball.tar"

    @property
    def repository(self) -> str:
        """The image's repository name in registries."""
        return f"{IMAGE_PREFIX}/{self.name}"

    @property
    def callers(self) -> tuple[str, ...]:
        """Every service allowed to call at least one of its methods, in list order of `allow`."""
        return tuple(dict.fromkeys(caller for callers in self.allow.values() for caller in callers))

    @property
    def proto_module(self) -> str:
        """A gRPC service's generated messages: books.<package>.v1.<package>_pb2 (services/defs.bzl has
        the Bazel label of the same convention)."""
        return f"books.{self.package}.v1.{self.package}_pb2"

    def address_flag(self) -> str:
        """The flag a caller takes this service's address with: --order-history-addr (env ORDER_HISTORY_ADDR)."""
        return f"--{self.name}-addr"


class Registry(Mapping[str, Service]):
    """The services in list order, by name."""

    def __init__(self, services: list[Service]) -> None:
        self._services = {service.name: service for service in services}
        _check(self)

    def __getitem__(self, name: str) -> Service:
        try:
            return self._services[name]
        except KeyError:
            raise KeyError(f"no service {name!r} in services/services.bzl; there are {', '.join(self)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)

    def calls(self, name: str) -> tuple[str, ...]:
        """The services `name` calls: those whose `allow` lists it."""
        return tuple(other.name for other in self.values() if name in other.callers)

    def callee_ports(self, name: str) -> dict[str, int]:
        """The services `name` calls → the port each is called on (libs/runtime's add_callee_flags takes it)."""
        return {callee: self[callee].port for callee in self.calls(name)}

    def start_order(self) -> list[Service]:
        """Every service after the ones it calls (so a caller finds its callees listening)."""
        order: list[Service] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in visiting:
                cycle = " → ".join([*visiting[visiting.index(name) :], name])
                raise RegistryError(f"services call each other in a cycle: {cycle}")
            if any(service.name == name for service in order):
                return
            visiting.append(name)
            for callee in self.calls(name):
                visit(callee)
            visiting.pop()
            order.append(self[name])

        for name in self:
            visit(name)
        return order

    def gateways(self) -> tuple[str, ...]:
        """The web services that serve the JSON API of every gRPC service allowing them (`gateway`)."""
        return tuple(service.name for service in self.values() if service.gateway)

    def used_ports(self) -> dict[int, str]:
        """Every port of every service → 'service (role)'."""
        return {port: f"{s.name} ({role})" for s in self.values() for role, port in s.ports.items()}


_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]*")
OPERATOR_PATHS = ("/healthz", "/readyz", "/metrics")
"""What every web service serves its operators (libs/http/app.py's PROBES), never the public."""


def routes(public_path: str, path: str) -> bool:
    """Whether the Ingress sends `path` along `public_path`: "/" exactly, any other path as a prefix of
    whole segments (Kubernetes' Exact and Prefix path types)."""
    if public_path == "/":
        return path == "/"
    return path == public_path or path.startswith(public_path + "/")


def _public_problems(service: Service, taken: dict[str, str]) -> list[str]:
    """What is wrong with `service`'s public paths; `taken` (path → service) collects them across the list."""
    where = f"service {service.name!r}"
    if service.public and service.kind != "http":
        return [f"{where}: only http services are public (a gRPC service is called by services)"]
    problems = []
    for path in service.public:
        if not isinstance(path, str) or not path.startswith("/") or (path != "/" and path.endswith("/")):
            problems.append(f"{where}: public path {path!r} must start with '/' and not end with one, like /api")
        elif any(routes(path, operator) for operator in OPERATOR_PATHS):
            problems.append(f"{where}: public path {path!r} would publish {', '.join(OPERATOR_PATHS)}")
        elif path in taken:
            problems.append(f"{where}: public path {path!r} is already {taken[path]}'s")
        else:
            taken[path] = service.name
    return problems


def _check(registry: Registry) -> None:
    problems: list[str] = []
    ports: dict[int, str] = {}
    public: dict[str, str] = {}
    for service in registry.values():
        where = f"service {service.name!r}"
        problem = dns_label_problem(service.name)
        if problem:
            problems.append(f"{where}: {problem}")
        if service.kind not in KINDS:
            problems.append(f"{where}: kind must be one of {', '.join(KINDS)}, got {service.kind!r}")
            continue
        if sorted(service.ports) != sorted(KINDS[service.kind]):
            problems.append(f"{where}: a {service.kind} service has ports {', '.join(KINDS[service.kind])}")
        for role, port in service.ports.items():
            if not isinstance(port, int) or not 1024 <= port <= 65535:
                problems.append(f"{where}: port {role} must be a number from 1024 to 65535, got {port!r}")
            elif port in ports:
                problems.append(f"{where}: port {port} ({role}) is already used by {ports[port]}")
            else:
                ports[port] = f"{service.name} ({role})"
        if service.kind == "grpc" and not _PROTO_SERVICE.match(service.grpc_service):
            problems.append(f"{where}: grpc_service must be a full proto name like pkg.v1.Service")
        if service.kind != "grpc" and (service.grpc_service or service.allow):
            problems.append(f"{where}: only grpc services have grpc_service and allow")
        problems += _public_problems(service, public)
        if service.serving not in SERVING or (service.serving != "aio" and service.kind != "grpc"):
            problems.append(f"{where}: serving must be one of {', '.join(SERVING)}, and only a grpc service has it")
        if service.gateway not in (True, False) or (service.gateway and service.kind != "http"):
            problems.append(f"{where}: gateway must be true or false, and only an http service is one")
        for key in service.settings:
            if not isinstance(key, str) or not _SETTING_NAME.fullmatch(key):
                problems.append(f"{where}: settings key {key!r} must be a setting's name, like forwarded_allow_ips")
        slo = service.slo
        for name in ("availability_percent", "latency_percent"):
            if not isinstance(getattr(slo, name), int | float) or not 0 < getattr(slo, name) < 100:
                problems.append(f"{where}: slo {name} must be a number between 0 and 100, got {getattr(slo, name)!r}")
        if not isinstance(slo.latency_ms, int) or slo.latency_ms <= 0:
            problems.append(f"{where}: slo latency_ms must be a whole number of milliseconds, got {slo.latency_ms!r}")
        for method, callers in service.allow.items():
            for caller in callers:
                if caller not in registry._services:
                    problems.append(f"{where}: {method} allows {caller!r}, which is not a service in the list")
                elif caller == service.name:
                    problems.append(f"{where}: {method} allows the service itself")
    if problems:
        raise RegistryError("services/services.bzl: " + "; ".join(problems))
    registry.start_order()  # raises on a cycle


def _literal(source: str) -> list[dict[str, Any]]:
    tree = ast.parse(source)
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and [getattr(t, "id", None) for t in statement.targets] == ["SERVICES"]:
            try:
                value = ast.literal_eval(statement.value)
            except ValueError as error:
                raise RegistryError(f"services/services.bzl: SERVICES must be a plain literal ({error})") from None
            if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
                raise RegistryError("services/services.bzl: SERVICES must be a list of dicts")
            return value
    raise RegistryError("services/services.bzl has no `SERVICES = [...]`")


def _slo(name: str, kind: str, fields: dict[str, Any]) -> Slo:
    unknown = set(fields) - set(Slo.__dataclass_fields__)
    if unknown:
        known = ", ".join(Slo.__dataclass_fields__)
        raise RegistryError(
            f"services/services.bzl: service {name!r}: unknown slo field {sorted(unknown)[0]!r} ({known})"
        )
    return replace(SLO_DEFAULTS.get(kind, Slo()), **fields)


def parse(source: str) -> Registry:
    """The registry of a services.bzl text; raises RegistryError naming what is wrong."""
    services = []
    for entry in _literal(source):
        name = entry.get("name", "?")
        unknown, missing = set(entry) - _REQUIRED - _OPTIONAL, _REQUIRED - set(entry)
        if unknown or missing:
            raise RegistryError(
                f"services/services.bzl: service {name!r}: "
                + "; ".join(
                    [f"unknown field {key!r}" for key in sorted(unknown)]
                    + [f"missing field {key!r}" for key in sorted(missing)]
                )
            )
        services.append(
            Service(
                name=entry["name"],
                kind=entry["kind"],
                ports=MappingProxyType(dict(entry["ports"])),
                description=entry["description"],
                grpc_service=entry.get("grpc_service", ""),
                allow=MappingProxyType({method: tuple(callers) for method, callers in entry.get("allow", {}).items()}),
                public=tuple(entry.get("public", ())),
                settings=MappingProxyType(dict(entry.get("settings", {}))),
                slo=_slo(name, entry.get("kind", ""), entry.get("slo", {})),
                gateway=entry.get("gateway", False),
                serving=entry.get("serving", "aio"),
            )
        )
    return Registry(services)


def load(path: Path = LIST_FILE) -> Registry:
    return parse(path.read_text())


REGISTRY = load()
