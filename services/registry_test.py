"""services/services.bzl against the repository: what each entry says is what each service does.

Bazel checks that every service has its library, binary, image and generated stubs (the BUILD file of this
test names them from the list, so a missing one fails the build). This test checks the rest: each
service's own flag parser listens where the list says and takes the address of every service it calls,
and each gRPC service's proto has the service and every method the list authorises. It also checks the
reader itself: a malformed list fails with a message naming the entry and the field.
"""

from __future__ import annotations

import importlib

import pytest
from google.api import annotations_pb2  # type: ignore[import-untyped]  # .pyi, no py.typed
from google.protobuf import descriptor_pool

from libs.http.app import PROBES
from libs.runtime import server
from libs.runtime.config import flag_environment
from services import registry
from services.registry import OPERATOR_PATHS, REGISTRY, RegistryError, Service, dns_label_problem, package_of, parse

GRPC = [name for name, service in REGISTRY.items() if service.kind == "grpc"]


def main_module(service: Service):
    return importlib.import_module(f"services.{service.package}.main")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_service_listens_where_the_list_says(name: str) -> None:
    service = REGISTRY[name]
    parser = main_module(service).parser()
    environment = flag_environment(parser)
    assert f"{service.env_prefix}_PORT" in environment
    assert parser.get_default("port") == service.port


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_service_takes_the_address_of_every_service_it_calls(name: str) -> None:
    environment = flag_environment(main_module(REGISTRY[name]).parser())
    for callee in REGISTRY.calls(name):
        prefix = REGISTRY[callee].env_prefix
        assert {f"{prefix}_ADDR", f"{prefix}_TLS_NAME"} <= set(environment), callee


@pytest.mark.parametrize("name", GRPC)
def test_the_proto_has_the_service_and_every_method_in_allow(name: str) -> None:
    service = REGISTRY[name]
    importlib.import_module(f"books.{service.package}.v1.{service.package}_pb2")
    found = descriptor_pool.Default().FindServiceByName(service.grpc_service)
    assert set(service.allow) <= set(found.methods_by_name), f"{name} allows methods its proto lacks"


def test_every_gateway_may_call_every_annotated_method_of_the_list() -> None:
    """An annotation promises the method over HTTP; the list must let the gateway call it (//tools/new_service
    does so for a new service), or its route would answer 403."""
    for name in GRPC:
        service = REGISTRY[name]
        importlib.import_module(service.proto_module)
        found = descriptor_pool.Default().FindServiceByName(service.grpc_service)
        for method in found.methods:
            if method.GetOptions().HasExtension(annotations_pb2.http) and method.name in service.allow:
                for gateway in REGISTRY.gateways():
                    assert gateway in service.allow[method.name], f"{name}.{method.name} does not allow {gateway}"


def test_callees_start_before_their_callers() -> None:
    order = [service.name for service in REGISTRY.start_order()]
    assert sorted(order) == sorted(REGISTRY)
    for name in REGISTRY:
        for callee in REGISTRY.calls(name):
            assert order.index(callee) < order.index(name)


@pytest.mark.parametrize(
    ("name", "package"), [("recommendations", "recommendations"), ("order-history", "order_history"), ("a1", "a1")]
)
def test_names_map_to_python_packages(name: str, package: str) -> None:
    assert dns_label_problem(name) is None
    assert package_of(name) == package


@pytest.mark.parametrize("name", ["Orders", "order_history", "-orders", "orders-", "9lives", "a--b", "", "x" * 41])
def test_names_that_are_not_lowercase_dns_labels(name: str) -> None:
    assert "is not a lowercase DNS label" in (dns_label_problem(name) or "")


def entry(name: str = "a", base: int = 50100, **changes: object) -> dict:
    """A valid gRPC entry, with `changes`."""
    fields = {
        "name": name,
        "kind": "grpc",
        "ports": {"grpc": base, "health": base + 1, "metrics": base + 2},
        "description": "A",
        "grpc_service": "a.v1.AService",
        "allow": {},
    }
    return {**fields, **changes}


def web(name: str = "a", port: int = 8000, **changes: object) -> dict:
    """A valid web entry, with `changes`."""
    return {"name": name, "kind": "http", "ports": {"http": port}, "description": "A", **changes}


def test_objectives_default_by_kind_and_field() -> None:
    web = {"name": "b", "kind": "http", "ports": {"http": 8000}, "description": "B"}
    registry = parse(f"SERVICES = {[entry(slo={'latency_percent': 95}), web]!r}")
    assert (registry["a"].slo.latency_ms, registry["a"].slo.latency_budget) == (250, 0.05)
    assert (registry["b"].slo.latency_ms, registry["b"].slo.availability_budget) == (500, 0.001)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a"}], "missing field 'kind'"),
        ([entry(colour=1)], "unknown field 'colour'"),
        ([entry(kind="soap")], "kind must be one of grpc, http"),
        ([entry(), entry("b")], "port 50100 (grpc) is already used by a (grpc)"),
        ([entry(allow={"Get": ["nobody"]})], "allows 'nobody', which is not a service"),
        ([entry(allow={"Get": ["a"]})], "allows the service itself"),
        ([entry(ports={"grpc": 50100, "health": 50101, "metrics": 80})], "port metrics must be a number from 1024"),
        ([entry(ports={"http": 8000})], "a grpc service has ports grpc, health, metrics"),
        ([entry(grpc_service="AService")], "grpc_service must be a full proto name"),
        ([entry(name="Order_History")], "is not a lowercase DNS label"),
        ([entry(kind="http", ports={"http": 8000})], "only grpc services have grpc_service and allow"),
        ([entry(slo={"availability": 99.9})], "unknown slo field 'availability'"),
        ([entry(slo={"availability_percent": 100})], "slo availability_percent must be a number between 0 and 100"),
        ([entry(slo={"latency_percent": "99"})], "slo latency_percent must be a number between 0 and 100"),
        ([entry(slo={"latency_ms": 0.5})], "slo latency_ms must be a whole number of milliseconds"),
        ([entry(public=["/"])], "only http services are public"),
        ([entry(gateway=True)], "only an http service is one"),
        ([entry(serving="fibers")], "serving must be one of aio, threads"),
        ([web(serving="threads")], "only a grpc service has it"),
        ([entry(serving="threads")], None),
        ([web(gateway="yes")], "gateway must be true or false"),
        ([web(public=["api"])], "public path 'api' must start with '/'"),
        ([web(public=["/api/"])], "public path '/api/' must start with '/' and not end with one"),
        ([web(public=["/metrics"])], "public path '/metrics' would publish"),
        ([web(public=["/healthz/x"])], None),
        ([web(public=["/", "/api"]), web("b", 8001, public=["/api"])], "public path '/api' is already a's"),
        ([web(settings={"A_FORWARDED_ALLOW_IPS": "*"})], "settings key 'A_FORWARDED_ALLOW_IPS' must be a setting's"),
    ],
)
def test_a_malformed_entry_is_refused_with_a_message_naming_the_fault(entries: list, message: str | None) -> None:
    if message is None:  # accepted (e.g. a path below a probe's is not the probe)
        assert parse(f"SERVICES = {entries!r}")
        return
    with pytest.raises(RegistryError, match="services/services.bzl") as raised:
        parse(f"SERVICES = {entries!r}")
    assert message in str(raised.value)


def test_operator_paths_are_the_probes_every_web_app_serves() -> None:
    assert tuple(PROBES) == OPERATOR_PATHS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("OTHER = []", "has no `SERVICES = [...]`"),
        ("SERVICES = [x]", "must be a plain literal"),
        ("SERVICES = {}", "must be a list of dicts"),
    ],
)
def test_a_malformed_list_is_refused_with_a_message_naming_the_fault(text: str, message: str) -> None:
    with pytest.raises(RegistryError, match="services/services.bzl") as raised:
        parse(text)
    assert message in str(raised.value)


def test_services_calling_each_other_in_a_cycle_are_refused() -> None:
    entries = [entry("a", allow={"Get": ["b"]}), entry("b", 50200, allow={"Get": ["a"]})]
    with pytest.raises(RegistryError, match="cycle: a → b → a"):
        parse(f"SERVICES = {entries!r}")


def test_the_ways_of_serving_are_the_runtimes() -> None:
    assert set(registry.SERVING) == set(server.SERVING)
