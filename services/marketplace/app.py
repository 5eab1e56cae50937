"""The Marketplace web app: server-rendered pages filled by the Recommendations gRPC service.

`create_app` takes the gRPC stub it calls, so the process entry point owns the channel and tests
pass a fake. Each page has a time budget (`timeout`) that bounds every backend call it makes
(libs/interceptors/deadlines). A failing or slow backend never breaks the page: it renders a notice
in place of the list. A request the backend rejects as invalid gets a 400 page naming what is wrong.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import jinja2
import prometheus_client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.interceptors.deadlines import deadline_scope
from libs.interceptors.errors import field_violations
from libs.interceptors.request_id import HTTP_HEADER, use_request_id

HERE = Path(__file__).parent
HOME_MAX_RESULTS = 3
DEFAULT_USER = 1
UNAVAILABLE_NOTICE = "Recommendations are unavailable right now. Please try again in a moment."
INVALID_NOTICE = "We could not show recommendations for this request:"

logger = logging.getLogger("marketplace")


class RequestIdMiddleware:
    """Takes X-Request-ID from the request (or makes one), keeps it for logs and gRPC calls, and
    returns it in the response. Plain ASGI: no per-request task, unlike BaseHTTPMiddleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = HTTP_HEADER.lower().encode()
        given = next((value for key, value in scope["headers"] if key == header), b"")
        request_id = use_request_id(given.decode("latin-1")).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (header, request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def metrics(request: Request) -> Response:
    return Response(prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST)


def create_app(recommendations: recommendations_pb2_grpc.RecommendationServiceStub, timeout: float) -> Starlette:
    """The ASGI app; `timeout` is each page's budget in seconds for its calls to Recommendations."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    templates = Jinja2Templates(env=environment)

    async def home(request: Request) -> Response:
        context: dict = {"books": [], "notice": None, "problems": []}
        status = 200
        user = request.query_params.get("user", str(DEFAULT_USER))
        if not user.lstrip("-").isdigit():
            context.update(notice=INVALID_NOTICE, problems=[f"user: must be a whole number, got {user[:40]!r}"])
            return templates.TemplateResponse(request, "home.html", context, status_code=400)
        try:
            with deadline_scope(timeout):
                response = await recommendations.Recommend(
                    recommendations_pb2.RecommendRequest(
                        user_id=int(user), category=catalog_pb2.MYSTERY, max_results=HOME_MAX_RESULTS
                    )
                )
            context["books"] = list(response.recommendations)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                status = 400
                problems = field_violations(error)
                context.update(notice=INVALID_NOTICE, problems=[str(p) for p in problems] or [error.details()])
            else:
                logger.warning("Recommend failed: %s: %s", error.code().name, error.details())
                context["notice"] = UNAVAILABLE_NOTICE
        return templates.TemplateResponse(request, "home.html", context, status_code=status)

    return Starlette(
        middleware=[Middleware(RequestIdMiddleware)],
        routes=[
            Route("/", home),
            Route("/metrics", metrics),
            # Runfiles and image layers hold symlinks; paths are still confined to the directory.
            Mount("/static", StaticFiles(directory=HERE / "static", follow_symlink=True), name="static"),
        ],
    )
