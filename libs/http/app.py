"""What every web app of ours has, whatever its pages: `web_app(routes)` is a Starlette app with

- `http_requests_total{method, route, status, status_class}`, `http_request_duration_seconds{method, route}`
  and `http_requests_in_flight` for every answer, refusals and failures included (`RequestMetrics`);
- an X-Request-ID taken from the request or made, kept for logs and gRPC calls, and returned;
- security headers on every response (a strict Content-Security-Policy, no sniffing or framing, HSTS
  over HTTPS);
- `/healthz` (the process answers), `/readyz` (it wants traffic: 503 while draining before a stop, else
  200 with what the app's `readiness` adds) and `/metrics` (with several processes, the sum over all);
- no redirect to a trailing slash (Starlette builds it from the client's Host header: a redirect anywhere).

libs/runtime/web.py serves it and tells it, through `serving_state(app)`, whether it is draining and where
the supervisor sums the metrics of several processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import prometheus_client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from libs.interceptors.request_id import HTTP_HEADER, use_request_id
from libs.runtime.metrics_sum import read_sums

logger = logging.getLogger("http.app")
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}
# Labels stay bounded: `route` is the route's template, `method` one of KNOWN_METHODS or "other", `status`
# one of the few codes an app answers, `status_class` 2xx..5xx (for error ratios without regular expressions).
HTTP_REQUESTS = prometheus_client.Counter(
    "http_requests",
    "HTTP requests answered by the app, by method, route and status.",
    ["method", "route", "status", "status_class"],
)
HTTP_DURATION = prometheus_client.Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request, by method and route.", ["method", "route"]
)
HTTP_IN_FLIGHT = prometheus_client.Gauge("http_requests_in_flight", "HTTP requests being answered now.")

Readiness = Callable[[Request], Awaitable[Mapping[str, Any]]]


@dataclass
class ServingState:
    """What the process serving the app knows and the app's probes report (libs/runtime/web.py sets it)."""

    readiness: Readiness | None = None  # the app's own facts for /readyz
    draining: bool = False  # a stop has begun: /readyz says 503 so that traffic moves away
    metrics_sums: Path | None = None  # with several processes: the supervisor's summed /metrics


def serving_state(app: Starlette) -> ServingState:
    return cast(ServingState, app.state.serving)  # set by web_app; Starlette's state is untyped


def adding_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """`send` that adds `headers` to the response's."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *headers]
        await send(message)

    return send_with_headers


class HttpMiddleware:
    """Plain ASGI middleware (no task per request, unlike Starlette's BaseHTTPMiddleware): `http` handles
    each HTTP request; anything else (lifespan, websockets) passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class SecurityHeaders(HttpMiddleware):
    """The headers every response carries: a Content-Security-Policy that allows only the app's own
    stylesheets and images (no script), no MIME sniffing, no framing, no referrer beyond our origin,
    and HSTS when the request came over HTTPS."""

    HEADERS = [
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]
    HSTS = (b"strict-transport-security", b"max-age=31536000")

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        extra = self.HEADERS + [self.HSTS] if scope.get("scheme") == "https" else self.HEADERS
        await self.app(scope, receive, adding_headers(send, extra))


class RequestMetrics(HttpMiddleware):
    """Counts and times every answer the app gives by method, route template (/category/{name}, so the
    labels stay few whatever paths clients ask for) and status."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # if the app raises before answering, uvicorn answers 500
        HTTP_IN_FLIGHT.inc()

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            HTTP_IN_FLIGHT.dec()
            HTTP_REQUESTS.labels(method, template, str(status), f"{status // 100}xx").inc()
            HTTP_DURATION.labels(method, template).observe(time.perf_counter() - started)


class RequestIdMiddleware(HttpMiddleware):
    """Takes X-Request-ID from the request (or makes one), keeps it for logs and gRPC calls, and
    returns it in the response."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = HTTP_HEADER.lower().encode()
        given = next((value for key, value in scope["headers"] if key == header), b"")
        request_id = use_request_id(given.decode("latin-1")).encode()
        await self.app(scope, receive, adding_headers(send, [(header, request_id)]))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = serving_state(request.app)
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    extra = await state.readiness(request) if state.readiness is not None else {}
    return JSONResponse({"status": "ready", **extra})


async def metrics(request: Request) -> Response:
    """This process's figures, or with several processes the sum over all (libs/runtime/metrics_sum.py)."""
    sums = serving_state(request.app).metrics_sums
    if sums is None:
        body = prometheus_client.generate_latest()
    else:
        try:
            body = await read_sums(sums)
        except (TimeoutError, OSError) as error:
            logger.error("no metrics from the supervisor at %s: %s", sums, error)
            return PlainTextResponse("metrics unavailable\n", status_code=503)
    return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)


PROBES = ["/healthz", "/readyz", "/metrics"]
"""Paths every web app serves to its operators, never to the public (the Ingress leaves them out)."""


def web_app(
    routes: Sequence[BaseRoute],
    *,
    readiness: Readiness | None = None,
    exception_handlers: Mapping[Any, ExceptionHandler] | None = None,
) -> Starlette:
    """The app serving `routes` and the probes; `readiness` adds the app's own facts to /readyz (it must
    not fail the probe for a dependency's outage the app degrades around)."""
    app = Starlette(
        middleware=[Middleware(RequestMetrics), Middleware(SecurityHeaders), Middleware(RequestIdMiddleware)],
        routes=[*routes, Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)],
        exception_handlers=dict(exception_handlers or {}),
    )
    app.router.redirect_slashes = False
    app.state.serving = ServingState(readiness)
    return app
