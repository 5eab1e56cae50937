"""The Marketplace web app: server-rendered pages and a JSON API over the Recommendations gRPC service.

`create_app` takes the gRPC stubs it calls, so the process entry point owns the channel and tests
pass fakes. Each request has a time budget (`timeout`) that bounds every backend call it makes
(libs/interceptors/deadlines). A failing or slow backend never breaks a page: each section shows a
notice in place of its list, within the budget; the API answers 503. Bad input gets a 400 page (or a
JSON error naming each bad field, from the backend's BadRequest details where present); an unknown
category gets a friendly 404.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.http.app import web_app
from libs.http.grpc_json import Backend as GrpcBackend
from libs.http.grpc_json import backends_status, json_call
from libs.interceptors.deadlines import deadline_scope
from libs.interceptors.errors import FieldViolation, field_violations

HERE = Path(__file__).parent
HOME_MAX_RESULTS = 3
CATEGORY_MAX_RESULTS = 10
DEFAULT_USER = 1
USER_COOKIE = "user"
UNAVAILABLE_NOTICE = "Recommendations are unavailable right now. Please try again in a moment."
INVALID_NOTICE = "We could not show recommendations for this request:"
RECOMMENDATIONS_SERVICE = recommendations_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name

logger = logging.getLogger("marketplace")


@dataclass(frozen=True)
class Category:
    enum: catalog_pb2.BookCategory.ValueType
    slug: str  # in URLs: /category/science-fiction
    title: str  # in text: "Science fiction"


_TITLES = {"SELF_HELP": "Self-help"}  # where the enum name's plain spelling is not how people write it
CATEGORIES = [
    Category(
        cast(catalog_pb2.BookCategory.ValueType, value.number),  # the descriptor's numbers are the enum's values
        value.name.lower().replace("_", "-"),
        _TITLES.get(value.name, value.name.replace("_", " ").capitalize()),
    )
    for value in catalog_pb2.BookCategory.DESCRIPTOR.values
    if value.number != catalog_pb2.BOOK_CATEGORY_UNSPECIFIED
]
BY_SLUG = {category.slug: category for category in CATEGORIES}


@dataclass
class Section:
    """One category's recommendations on a page, or why there are none."""

    category: Category
    books: list[recommendations_pb2.BookRecommendation] = field(default_factory=list)
    notice: str | None = None
    problems: list[str] = field(default_factory=list)
    status: int = 200


class BadParameters(Exception):
    """Query parameters the marketplace itself rejects, before calling anything."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(str(v) for v in violations))
        self.violations = violations


INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: int() also takes "٣" (Arabic-Indic three)


def parse_int(
    value: str | None,
    name: str,
    default: int | None,
    violations: list[FieldViolation],
    bits: tuple[int, int] = INT64,
) -> int | None:
    """A whole number that fits the API field (`bits`: INT32 or INT64); the backend judges the rest."""
    if value is None or value == "":
        return default
    text = value.strip()
    if not _WHOLE_NUMBER.fullmatch(text) or not bits[0] <= int(text) <= bits[1]:
        violations.append(FieldViolation(name, f"must be a whole number, got {value[:40]!r}"))
        return None
    return int(text)


def shopper_id(value: str | None, name: str, violations: list[FieldViolation]) -> int | None:
    """A shopper: a positive id, as the API takes `user_id` (recommendations.proto); None if absent or bad."""
    user = parse_int(value, name, None, violations)
    if user is not None and user < 1:
        violations.append(FieldViolation(name, f"must be a positive id, got {user}"))
        return None
    return user


def shopper(request: Request) -> tuple[int, bool]:
    """The shopper from `?user=` (which also sets the cookie) or the cookie; raises BadParameters for a bad
    `?user=`. A bad cookie is ignored (it came from elsewhere, or from before a rule changed): it must not
    make every later page a 400."""
    violations: list[FieldViolation] = []
    given = request.query_params.get("user")
    if given is not None and given.strip():
        user = shopper_id(given, "user", violations)
        if violations:
            raise BadParameters(violations)
        return cast(int, user), True  # None only along with a violation (raised above)
    return shopper_id(request.cookies.get(USER_COOKIE), USER_COOKIE, []) or DEFAULT_USER, False


@dataclass(frozen=True)
class Backend:
    """What the handlers depend on, kept on `app.state.backend` by `create_app`."""

    recommendations: recommendations_pb2_grpc.RecommendationServiceAsyncStub
    timeout: float  # each request's budget in seconds for its calls to Recommendations
    templates: Jinja2Templates


def backend_of(request: Request) -> Backend:
    return cast(Backend, request.app.state.backend)  # set by create_app; Starlette's state is untyped


def failed(section: Section, error: grpc.aio.AioRpcError) -> Section:
    """Puts the reason a call failed in place of the section's list."""
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        section.status, section.notice = 400, INVALID_NOTICE
        section.problems = [str(p) for p in field_violations(error)] or [error.details() or ""]
    elif error.code() == grpc.StatusCode.NOT_FOUND:
        section.notice = empty_notice(section.category)
    else:
        logger.warning("recommendations failed: %s: %s", error.code().name, error.details())
        section.notice = UNAVAILABLE_NOTICE
    return section


async def one_section(backend: Backend, category: Category, user: int, max_results: int) -> Section:
    request = recommendations_pb2.RecommendRequest(user_id=user, category=category.enum, max_results=max_results)
    try:
        return Section(category, list((await backend.recommendations.Recommend(request)).recommendations))
    except grpc.aio.AioRpcError as error:
        return failed(Section(category), error)


async def every_section(backend: Backend, user: int, max_results: int) -> list[Section]:
    """All categories in one RecommendEach call: one round trip per page, not one per shelf."""
    request = recommendations_pb2.RecommendEachRequest(
        user_id=user, categories=[c.enum for c in CATEGORIES], max_results=max_results
    )
    try:
        response = await backend.recommendations.RecommendEach(request)
    except grpc.aio.AioRpcError as error:
        return [failed(Section(category), error) for category in CATEGORIES]
    shelves = {shelf.category: list(shelf.recommendations) for shelf in response.categories}
    return [Section(c, shelves.get(c.enum, []), None if shelves.get(c.enum) else empty_notice(c)) for c in CATEGORIES]


def render(
    request: Request, name: str, context: Mapping[str, object], status: int, set_user: int | None = None
) -> Response:
    templates = backend_of(request).templates
    response = templates.TemplateResponse(request, name, {"categories": CATEGORIES, **context}, status_code=status)
    if set_user is not None:
        # Secure when the page came over HTTPS (directly, or per X-Forwarded-Proto from a trusted proxy).
        response.set_cookie(
            USER_COOKIE,
            str(set_user),
            max_age=30 * 86400,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response


def chosen_shopper(user: int, chosen: bool, status: int) -> int | None:
    """The shopper to remember in the cookie: one chosen by `?user=` on a page the backend did not refuse."""
    return user if chosen and status < 400 else None


def bad_request_page(request: Request, error: BadParameters) -> Response:
    context = {"title": "Bad request", "message": INVALID_NOTICE, "problems": [str(v) for v in error.violations]}
    return render(request, "error.html", context, 400)


async def home(request: Request) -> Response:
    backend = backend_of(request)
    try:
        user, chosen = shopper(request)
    except BadParameters as error:
        return bad_request_page(request, error)
    with deadline_scope(backend.timeout):
        sections = await every_section(backend, user, HOME_MAX_RESULTS)
    status = max(s.status for s in sections)
    return render(
        request, "home.html", {"sections": sections, "user": user}, status, chosen_shopper(user, chosen, status)
    )


async def category_page(request: Request) -> Response:
    backend = backend_of(request)
    category = BY_SLUG.get(request.path_params["name"])
    if category is None:
        raise HTTPException(404)
    try:
        user, chosen = shopper(request)
    except BadParameters as error:
        return bad_request_page(request, error)
    with deadline_scope(backend.timeout):
        result = await one_section(backend, category, user, CATEGORY_MAX_RESULTS)
    context = {"section": result, "user": user}
    return render(request, "category.html", context, result.status, chosen_shopper(user, chosen, result.status))


async def api_recommendations(request: Request) -> Response:
    backend = backend_of(request)
    violations: list[FieldViolation] = []
    params = request.query_params
    slug = params.get("category", "")
    category = BY_SLUG.get(slug)
    if category is None:
        known = ", ".join(BY_SLUG)
        violations.append(FieldViolation("category", f"must be one of {known}, got {slug[:40]!r}"))
    max_results = parse_int(params.get("max_results"), "max_results", HOME_MAX_RESULTS, violations, INT32)
    user = parse_int(params.get("user_id"), "user_id", DEFAULT_USER, violations)
    if violations:
        return api_error(400, "invalid request", violations)
    # Each is None only along with a violation, answered above.
    category, user, max_results = cast(Category, category), cast(int, user), cast(int, max_results)
    request_message = recommendations_pb2.RecommendRequest(
        user_id=user, category=category.enum, max_results=max_results
    )
    try:
        with deadline_scope(backend.timeout):
            response = await backend.recommendations.Recommend(request_message)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            # The error of a call always has its details (a str); only a hand-made AioRpcError may lack them.
            details = cast(str, error.details())
            return api_error(400, "invalid request", field_violations(error) or [FieldViolation("", details)])
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return api_error(404, error.details() or "not found")
        logger.warning("Recommend failed: %s: %s", error.code().name, error.details())
        return api_error(503, "recommendations are unavailable right now", code=error.code().name)
    books = [{"id": b.id, "title": b.title, "author": b.author, "year": b.year} for b in response.recommendations]
    return JSONResponse({"category": category.slug, "user_id": user, "recommendations": books})


async def not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return api_error(404, "no such resource")
    context = {"title": "Page not found", "message": "We could not find that page. Try one of the categories."}
    return render(request, "error.html", context, 404)


ROUTES = [
    Route("/", home),
    Route("/category/{name}", category_page),
    Route("/api/recommendations", api_recommendations),
    # Every unary method of the services it calls, as every web service of ours has it (libs/http/grpc_json.py).
    Route("/api/{service}/{method}", json_call, methods=["GET", "POST"]),
    # Runfiles and image layers hold symlinks; paths are still confined to the directory.
    Mount("/static", StaticFiles(directory=HERE / "static", follow_symlink=True), name="static"),
]


def create_app(
    recommendations: recommendations_pb2_grpc.RecommendationServiceAsyncStub,
    timeout: float,
    backends: Mapping[str, GrpcBackend] | None = None,
) -> Starlette:
    """The ASGI app; `timeout` is each request's budget in seconds for its calls to Recommendations;
    `backends`, every service it calls, are what /api/{service}/{method} calls and /readyz reports (it stays
    ready while one is down: its pages degrade gracefully, and taking every marketplace out of rotation would
    turn that into errors)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    app = web_app(ROUTES, readiness=backends_status, exception_handlers={404: not_found})
    app.state.backend = Backend(recommendations, timeout, Jinja2Templates(env=environment))
    app.state.backends = dict(backends or {})
    return app


def empty_notice(category: Category) -> str:
    return f"We have no {category.title.lower()} books to recommend yet."


def api_error(
    status: int, message: str, violations: Sequence[FieldViolation] = (), code: str | None = None
) -> Response:
    body: dict[str, object] = {"error": message}
    if violations:
        body["fields"] = [{"field": v.field, "description": v.description} for v in violations]
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status)
