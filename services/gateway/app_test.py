"""The gateway app in-process (Starlette's TestClient), with the backends of the services it calls (their
real descriptors, channels that are never reached): its routes, its refusals, its errors, the probes."""

from __future__ import annotations

import importlib
from typing import Any, cast

import grpc
import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from libs.http.grpc_json import Backend
from libs.http.openapi import openapi_path
from libs.http.transcoding import HttpRoute, routes_of
from services.gateway.app import create_app
from services.gateway.main import SERVICE
from services.registry import REGISTRY

CALLEES = REGISTRY.calls(SERVICE.name)


def unavailable() -> grpc.aio.AioRpcError:
    metadata = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, metadata, metadata, "down", "")


class Unreachable:
    """A channel whose calls fail as an unreachable service's do, unary and server-streaming alike."""

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        async def call(request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            raise unavailable()

        return call

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        class Call:
            def __aiter__(self) -> Call:
                return self

            async def __anext__(self) -> Any:
                raise unavailable()

            def cancel(self) -> bool:
                return True

        return lambda request, timeout=None, **kwargs: Call()


def backends() -> dict[str, Backend]:
    found = {}
    for name in CALLEES:
        importlib.import_module(REGISTRY[name].proto_module)
        channel = cast(grpc.aio.Channel, Unreachable())
        found[name] = Backend.of(REGISTRY[name].grpc_service, channel, timeout=0.5)
    return found


ROUTES = [route for name, backend in backends().items() for route in routes_of(name, backend.service)]


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(backends()))


def test_every_annotated_method_of_every_callee_has_a_route(client: TestClient) -> None:
    listed = client.get("/").json()["routes"]
    assert listed == [{"method": r.verb, "path": r.template.text, "rpc": r.method.path} for r in ROUTES]
    annotated = {r.method.path for r in ROUTES}
    assert annotated, "no annotated method among the services the gateway calls"


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.verb} {r.template.text}" for r in ROUTES])
def test_a_field_the_method_does_not_have_is_a_400_naming_it(client: TestClient, route: HttpRoute) -> None:
    body = {"noSuchField": 1} if route.body == "*" else None
    query = "" if route.body == "*" else "?no_such_field=1"
    answer = client.request(route.verb, route.template.example() + query, json=body if route.body else None)
    assert answer.status_code == 400, answer.text
    [detail] = answer.json()["details"]
    assert detail["fieldViolations"][0]["field"] in ("noSuchField", "no_such_field")


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.verb} {r.template.text}" for r in ROUTES])
def test_a_failed_call_is_a_google_rpc_status_with_its_http_status(client: TestClient, route: HttpRoute) -> None:
    answer = client.request(route.verb, route.template.example(), json={} if route.body else None)
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"code": grpc.StatusCode.UNAVAILABLE.value[0], "message": "down"}


def test_unknown_paths_are_404_and_probes_report_every_callee(client: TestClient) -> None:
    assert client.get("/v1/nothing/here").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", **{name: "UNAVAILABLE" for name in CALLEES}}
    metrics = client.get("/metrics")
    assert 'http_requests_total{method="GET",route="/healthz",status="200",status_class="2xx"}' in metrics.text


def test_the_openapi_document_describes_every_route_and_validates(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    validate(spec)
    described = {(verb.upper(), path) for path, item in spec["paths"].items() for verb in item}
    served = {(r.verb, openapi_path(r.template)[0]) for r in ROUTES}
    assert described == served
