"""Property tests (hypothesis): no input crashes the services; only documented answers come back.

Recommendations: any RecommendRequest / RecommendEachRequest field values give a response,
INVALID_ARGUMENT with field violations, or NOT_FOUND. Marketplace: any path under its routes, query
string and X-Request-ID header give 200, 400 or 404, never a 500, and every 400 names its fields.
The marketplace runs against the real servicer in-process (through the same status mapping as
over the wire), so the two are fuzzed together. 10,500 cases per run, with fixed seeds.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from urllib.parse import quote

import grpc
from grpc_interceptor.exceptions import GrpcException
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from books.recommendations.v1 import recommendations_pb2
from libs.interceptors.errors import BadRequest
from services.marketplace.app import create_app
from services.recommendations.catalog import DEFAULT_CATALOG, Catalog
from services.recommendations.servicer import RecommendationServicer, category_names

CATALOG = Catalog.from_csv(DEFAULT_CATALOG, category_names())
SERVICER = RecommendationServicer(CATALOG, ThreadPoolExecutor(2))
NO_CONTEXT: Any = None  # the handlers never use their context
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


def budget(examples: int) -> settings:
    """`examples` cases, no per-case deadline, and no example database (the runfiles are read-only)."""
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(call: Callable[[], object]) -> str:
    """'ok', or the status a raised exception maps to; any other exception fails the test."""
    try:
        call()
    except BadRequest as error:
        return "INVALID_ARGUMENT" if error.violations else "BadRequest without field violations"
    except GrpcException as error:
        return error.status_code.name
    return "ok"


@seed(20261129)
@budget(5000)
@given(user_id=INT64, category=INT32, max_results=INT32)
def test_recommend_answers_only_documented_statuses(user_id: int, category: int, max_results: int) -> None:
    # Any int32 for the enum: unknown values are the point.
    request = recommendations_pb2.RecommendRequest(
        user_id=user_id, category=cast(Any, category), max_results=max_results
    )
    # Every category has books: never NOT_FOUND.
    assert outcome(lambda: SERVICER.Recommend(request, NO_CONTEXT)) in ("ok", "INVALID_ARGUMENT")


@seed(20261130)
@budget(2500)
@given(user_id=INT64, categories=st.lists(INT32, max_size=12), max_results=INT32)
def test_recommend_each_answers_only_documented_statuses(user_id: int, categories: list, max_results: int) -> None:
    request = recommendations_pb2.RecommendEachRequest(user_id=user_id, categories=categories, max_results=max_results)
    assert outcome(lambda: SERVICER.RecommendEach(request, NO_CONTEXT)) in ("ok", "INVALID_ARGUMENT")


class InProcessRecommendations:
    """The real servicer behind the stub interface, failing the way the wire does (status + trailers)."""

    async def _call(self, method, request):
        try:
            return method(request, NO_CONTEXT)
        except GrpcException as error:
            rich = getattr(error, "status_proto", None)
            trailers = grpc.aio.Metadata(*rpc_status.to_status(rich()).trailing_metadata) if rich else None
            raise grpc.aio.AioRpcError(
                error.status_code,
                grpc.aio.Metadata(),
                trailers or grpc.aio.Metadata(),
                details=error.details,
                debug_error_string="",
            ) from None

    async def Recommend(self, request, timeout=None):
        return await self._call(SERVICER.Recommend, request)

    async def RecommendEach(self, request, timeout=None):
        return await self._call(SERVICER.RecommendEach, request)


WEB = TestClient(create_app(cast(Any, InProcessRecommendations()), timeout=5.0))  # a stub in all but name
TEXT = st.text(alphabet=string.printable + "éü€<>&\"'", max_size=30)
NUMBERISH = st.one_of(TEXT, INT64.map(str), st.just(""))
SLUGS = st.one_of(st.sampled_from(["mystery", "science-fiction", "self-help", "fantasy", "history", "biography"]), TEXT)


@st.composite
def page_requests(draw) -> tuple[str, dict]:
    route = draw(st.sampled_from(["home", "category", "api"]))
    params: dict[str, str] = {}
    for name in draw(st.lists(st.sampled_from(["user", "user_id", "category", "max_results", "other"]), max_size=4)):
        params[name] = draw(NUMBERISH if name != "category" else SLUGS)
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    path = {"home": "/", "category": f"/category/{quote(draw(SLUGS), safe='')}", "api": "/api/recommendations"}[route]
    # Raw bytes: what a client may really send (httpx refuses non-ASCII str header values).
    headers = {"X-Request-ID": draw(TEXT.filter(lambda s: "\n" not in s and "\r" not in s)).encode()}
    return f"{path}?{query}" if query else path, headers


@seed(20261131)
@budget(3000)
@given(page_requests())
def test_marketplace_answers_only_200_400_404(request: tuple[str, dict]) -> None:
    path, headers = request
    response = WEB.get(path, headers=headers)
    assert response.status_code in (200, 400, 404), (path, response.status_code, response.text[:300])
    assert response.headers["x-request-id"]
    if path.startswith("/api/") and response.status_code == 400:
        assert response.json()["fields"], response.text
