"""The Marketplace web app: server-rendered pages filled by the Recommendations gRPC service.

`create_app` takes the gRPC stub it calls, so the process entry point owns the channel and tests
pass a fake. A failing or slow backend never breaks the page: it renders a notice in place of the
list, within the per-call deadline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc

HERE = Path(__file__).parent
HOME_MAX_RESULTS = 3
UNAVAILABLE_NOTICE = "Recommendations are unavailable right now. Please try again in a moment."

logger = logging.getLogger("marketplace")


def create_app(recommendations: recommendations_pb2_grpc.RecommendationServiceStub, timeout: float) -> Starlette:
    """The ASGI app; `timeout` is the deadline in seconds of each call to Recommendations."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    templates = Jinja2Templates(env=environment)

    async def home(request: Request) -> Response:
        books, notice = [], None
        try:
            response = await recommendations.Recommend(
                recommendations_pb2.RecommendRequest(
                    user_id=1, category=catalog_pb2.MYSTERY, max_results=HOME_MAX_RESULTS
                ),
                timeout=timeout,
            )
            books = list(response.recommendations)
        except grpc.aio.AioRpcError as error:
            logger.warning("Recommend failed: %s: %s", error.code().name, error.details())
            notice = UNAVAILABLE_NOTICE
        return templates.TemplateResponse(request, "home.html", {"books": books, "notice": notice})

    return Starlette(
        routes=[
            Route("/", home),
            # Runfiles and image layers hold symlinks; paths are still confined to the directory.
            Mount("/static", StaticFiles(directory=HERE / "static", follow_symlink=True), name="static"),
        ]
    )
