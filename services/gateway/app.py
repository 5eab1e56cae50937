"""The gateway: every gRPC API of the list as JSON over HTTP, from its google.api.http annotations.

Each HTTP binding of each annotated unary or server-streaming method of the services it calls is a route
(libs/http/transcoding.py): `GET /v1/recommendations?user_id=1&category=MYSTERY&max_results=3` calls
Recommend and answers its JSON; `GET /` lists the routes, `GET /openapi.json` describes them (OpenAPI 3.1,
written by the `:openapi` target). libs/http/app.py's web_app adds metrics and the access log per route,
request ids, security headers and the probes; /readyz reports the health of every service it calls.

Why a service of its own, not an HTTP port on each gRPC service: the JSON API gets one public address and
one Ingress path (`public` in services/services.bzl), its own processes to scale and its own SLO, and the
gRPC services keep a single protocol and a single authorisation. Who calls them is the gateway, with its
own mTLS identity: a method is reachable as JSON only where the service's `allow` rules list `gateway`
(//tools/new_service lists it for a new service), exactly as for any other caller. The cost is one hop.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from libs.http.app import web_app
from libs.http.grpc_json import Backend, backends_status
from libs.http.transcoding import transcoded_routes
from libs.processes.processes import runfile

OPENAPI = "services/gateway/openapi.json"  # written by the :openapi target from the same descriptors


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document of every route (the protos' comments are its descriptions)."""
    return Response(runfile(OPENAPI).read_bytes(), media_type="application/json")


async def index(request: Request) -> Response:
    """Every route: its HTTP method and template, and the RPC it calls."""
    routes = [
        {"method": route.http_route.verb, "path": route.path, "rpc": route.http_route.method.path}
        for route in request.app.state.transcoded
    ]
    return JSONResponse({"routes": routes})


def create_app(backends: Mapping[str, Backend]) -> Starlette:
    """The ASGI app over `backends`: the services it calls, by name."""
    transcoded = transcoded_routes(backends)
    routes: list[BaseRoute] = [Route("/", index), Route("/openapi.json", openapi), *transcoded]
    app = web_app(routes, readiness=backends_status)
    app.state.backends = backends
    app.state.transcoded = transcoded
    return app
