"""Tests of the Marketplace pages and API against fake Recommendations stubs (no network)."""

from __future__ import annotations

import re
from typing import Any, cast

import grpc
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2
from starlette.testclient import TestClient

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.http.app import PROBES
from libs.http.grpc_json import Backend
from libs.interceptors.deadlines import time_remaining
from libs.interceptors.errors import BadRequest, FieldViolation
from services.marketplace.app import (
    CATEGORIES,
    CATEGORY_MAX_RESULTS,
    HOME_MAX_RESULTS,
    INVALID_NOTICE,
    RECOMMENDATIONS_SERVICE,
    UNAVAILABLE_NOTICE,
    create_app,
)
from services.registry import REGISTRY, routes

BOOKS = [
    recommendations_pb2.BookRecommendation(
        id=1, title="Murder on the Orient Express", author="Agatha Christie", year=1934
    ),
    recommendations_pb2.BookRecommendation(id=2, title="The Big Sleep", author="Raymond Chandler", year=1939),
    recommendations_pb2.BookRecommendation(id=3, title="Rebecca", author="Daphne du Maurier", year=1938),
]


class FakeRecommendations:
    """Stands in for RecommendationServiceStub: records requests, answers or fails as told."""

    def __init__(self, books=(), error: grpc.aio.AioRpcError | None = None, empty=()) -> None:
        self.books, self.error, self.empty = list(books), error, set(empty)
        # (request, seconds left of its deadline): a RecommendRequest or a RecommendEachRequest, which
        # each test reads as the one it expects.
        self.calls: list[tuple[Any, float | None]] = []

    async def Recommend(
        self, request: recommendations_pb2.RecommendRequest, timeout: float | None = None
    ) -> recommendations_pb2.RecommendResponse:
        self.calls.append((request, time_remaining()))
        if self.error:
            raise self.error
        return recommendations_pb2.RecommendResponse(recommendations=self.books[: request.max_results])

    async def RecommendEach(
        self, request: recommendations_pb2.RecommendEachRequest, timeout: float | None = None
    ) -> recommendations_pb2.RecommendEachResponse:
        self.calls.append((request, time_remaining()))
        if self.error:
            raise self.error
        return recommendations_pb2.RecommendEachResponse(
            categories=[
                recommendations_pb2.CategoryRecommendations(
                    category=category,
                    recommendations=[] if category in self.empty else self.books[: request.max_results],
                )
                for category in request.categories
            ]
        )


class FakeHealthChannel:
    """A channel to Recommendations on which only grpc.health.v1 answers: SERVING, or fails with `error`."""

    def __init__(self, error: grpc.aio.AioRpcError | None = None) -> None:
        self.error = error

    def unary_unary(self, method: str, **kwargs: Any) -> Any:
        assert method == "/grpc.health.v1.Health/Check", method

        async def check(request: Any, timeout: float | None = None, **options: Any) -> Any:
            if self.error:
                raise self.error
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        return check


def rpc_error(code: grpc.StatusCode, details: str = "", trailers: tuple = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details=details, debug_error_string=None
    )


def bad_request(*violations: FieldViolation) -> grpc.aio.AioRpcError:
    error = BadRequest(list(violations))
    trailers = (("grpc-status-details-bin", error.status_proto().SerializeToString()),)
    return rpc_error(grpc.StatusCode.INVALID_ARGUMENT, error.details, trailers)


def as_stub(fake: FakeRecommendations) -> recommendations_pb2_grpc.RecommendationServiceAsyncStub:
    """The fake as the stub type create_app takes: it has the two methods the app calls."""
    return cast("recommendations_pb2_grpc.RecommendationServiceAsyncStub", fake)  # a stub type: no runtime class


def client(stub: FakeRecommendations, health: FakeHealthChannel | None = None) -> TestClient:
    """The app; with `health`, the backend /readyz reports and /api/recommendations/{method} calls."""
    channel = cast(grpc.aio.Channel, health)
    backends = {"recommendations": Backend.of(RECOMMENDATIONS_SERVICE, channel, 0.25)} if health else {}
    return TestClient(create_app(as_stub(stub), timeout=0.25, backends=backends), raise_server_exceptions=True)


def section(body: str, slug: str) -> str:
    start = body.index(f'id="{slug}-heading"')
    return body[start : body.index("</section>", start)]


def test_home_has_a_section_per_category_and_keeps_the_mystery_heading() -> None:
    response = client(FakeRecommendations(BOOKS)).get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Online Books For You</title>" in response.text
    assert '<h1 id="mystery-heading">Mystery books you may like</h1>' in response.text
    for category in CATEGORIES:
        assert section(response.text, category.slug).count("<li><cite>") == HOME_MAX_RESULTS
    mystery = section(response.text, "mystery")
    for book in BOOKS:
        assert f"<cite>{book.title}</cite>" in mystery
        assert f"by {book.author}" in mystery
        assert f"({book.year})" in mystery
    assert UNAVAILABLE_NOTICE not in response.text


def test_home_asks_every_category_in_one_call_within_the_page_budget() -> None:
    stub = FakeRecommendations(BOOKS)
    client(stub).get("/")
    [(request, remaining)] = stub.calls
    assert list(request.categories) == [c.enum for c in CATEGORIES]
    assert (request.user_id, request.max_results) == (1, HOME_MAX_RESULTS)
    assert remaining is not None  # the page set a deadline
    assert 0 < remaining <= 0.25


def test_category_page_shows_more_books() -> None:
    stub = FakeRecommendations(BOOKS * 4)
    response = client(stub).get("/category/science-fiction")
    assert response.status_code == 200
    assert "<title>Science fiction · Online Books For You</title>" in response.text
    assert '<h1 id="science-fiction-heading">Science fiction books you may like</h1>' in response.text
    assert response.text.count("<li><cite>") == CATEGORY_MAX_RESULTS
    [(request, _)] = stub.calls
    assert (request.category, request.max_results) == (catalog_pb2.SCIENCE_FICTION, CATEGORY_MAX_RESULTS)


def test_unknown_category_is_a_friendly_404() -> None:
    response = client(FakeRecommendations(BOOKS)).get("/category/poetry")
    assert response.status_code == 404
    assert "Page not found" in response.text
    assert 'href="/category/mystery"' in response.text  # a way on


def test_user_parameter_picks_the_shopper_and_sticks_in_a_cookie() -> None:
    stub = FakeRecommendations(BOOKS)
    web = client(stub)
    response = web.get("/?user=42")
    assert "user=42" in response.headers["set-cookie"]
    assert "HttpOnly" in response.headers["set-cookie"]
    web.get("/category/mystery")  # no parameter: the cookie decides
    assert {request.user_id for request, _ in stub.calls} == {42}


def test_non_numeric_user_is_a_400_page_without_calling_the_backend() -> None:
    stub = FakeRecommendations(BOOKS)
    response = client(stub).get("/?user=<b>x</b>")
    assert response.status_code == 400
    assert "user: must be a whole number, got &#39;&lt;b&gt;x&lt;/b&gt;&#39;" in response.text
    assert "<b>x</b>" not in response.text
    assert not stub.calls


def test_backend_field_violations_become_a_400_page_with_human_messages() -> None:
    stub = FakeRecommendations(error=bad_request(FieldViolation("user_id", "is not a known shopper, got 7")))
    response = client(stub).get("/?user=7")
    assert response.status_code == 400
    assert INVALID_NOTICE in response.text
    assert '<li class="problem">user_id: is not a known shopper, got 7</li>' in response.text
    assert "set-cookie" not in response.headers  # a shopper the backend refused is not remembered


@pytest.mark.parametrize("user", ["-1", "0", "x"])
def test_a_bad_shopper_is_a_400_page_and_never_sticks(user: str) -> None:
    """Was: `/?user=-1` answered 400 and set user=-1 for 30 days, so every later page was a 400 (a cross-site
    link does it). A bad id is refused without calling the backend and sets no cookie; a bad cookie, from
    wherever it came, is ignored."""
    stub = FakeRecommendations(BOOKS)
    web = client(stub)
    response = web.get("/", params={"user": user})
    assert response.status_code == 400
    assert "set-cookie" not in response.headers
    assert not stub.calls
    web.cookies.set("user", user)
    for path in ("/", "/category/mystery"):
        assert web.get(path).status_code == 200
    assert {request.user_id for request, _ in stub.calls} == {1}  # the default shopper


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL]
)
def test_backend_failure_shows_notices_instead_of_a_500(code: grpc.StatusCode) -> None:
    response = client(FakeRecommendations(error=rpc_error(code, "backend trouble"))).get("/")
    assert response.status_code == 200
    assert response.text.count(UNAVAILABLE_NOTICE) == len(CATEGORIES)
    assert "<li><cite>" not in response.text
    assert "backend trouble" not in response.text


def test_an_empty_category_says_so_and_the_others_still_show() -> None:
    response = client(FakeRecommendations(BOOKS, empty={catalog_pb2.HISTORY})).get("/")
    assert "We have no history books to recommend yet." in section(response.text, "history")
    assert section(response.text, "mystery").count("<li><cite>") == 3


def test_titles_are_escaped() -> None:
    evil = recommendations_pb2.BookRecommendation(id=9, title="<script>alert('x')</script>", author="A & B", year=2000)
    response = client(FakeRecommendations([evil])).get("/")
    assert "<script>" not in response.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in response.text
    assert "A &amp; B" in response.text


def test_api_returns_recommendations_as_json() -> None:
    stub = FakeRecommendations(BOOKS)
    response = client(stub).get("/api/recommendations?category=mystery&max_results=2&user_id=7")
    assert response.status_code == 200
    assert response.json() == {
        "category": "mystery",
        "user_id": 7,
        "recommendations": [
            {"id": 1, "title": "Murder on the Orient Express", "author": "Agatha Christie", "year": 1934},
            {"id": 2, "title": "The Big Sleep", "author": "Raymond Chandler", "year": 1939},
        ],
    }


def test_api_names_every_bad_field_it_can_check_itself() -> None:
    stub = FakeRecommendations(BOOKS)
    response = client(stub).get("/api/recommendations?category=poetry&max_results=lots&user_id=1.5")
    assert response.status_code == 400
    fields = {f["field"]: f["description"] for f in response.json()["fields"]}
    assert set(fields) == {"category", "max_results", "user_id"}
    assert fields["category"].startswith("must be one of mystery, science-fiction")
    assert not stub.calls


def test_api_rejects_numbers_its_fields_cannot_hold() -> None:
    stub = FakeRecommendations(BOOKS)
    response = client(stub).get(
        "/api/recommendations?category=mystery&max_results=2147483648&user_id=99999999999999999999"
    )
    assert response.status_code == 400
    assert {f["field"] for f in response.json()["fields"]} == {"max_results", "user_id"}
    assert not stub.calls


def test_api_maps_backend_bad_request_to_400_fields() -> None:
    error = bad_request(FieldViolation("max_results", "must be between 1 and 20, got 99"))
    response = client(FakeRecommendations(error=error)).get("/api/recommendations?category=mystery&max_results=99")
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid request",
        "fields": [{"field": "max_results", "description": "must be between 1 and 20, got 99"}],
    }


def test_api_answers_503_when_the_backend_is_down() -> None:
    response = client(FakeRecommendations(error=rpc_error(grpc.StatusCode.UNAVAILABLE))).get(
        "/api/recommendations?category=mystery"
    )
    assert response.status_code == 503
    assert response.json() == {"error": "recommendations are unavailable right now", "code": "UNAVAILABLE"}


def test_unknown_api_path_is_a_json_404() -> None:
    response = client(FakeRecommendations(BOOKS)).get("/api/nothing")
    assert response.status_code == 404
    assert response.json() == {"error": "no such resource"}


def test_probes_and_metrics() -> None:
    web = client(FakeRecommendations(BOOKS), FakeHealthChannel())
    assert web.get("/healthz").json() == {"status": "ok"}
    assert web.get("/readyz").json() == {"status": "ready", "recommendations": "SERVING"}
    down = client(FakeRecommendations(BOOKS), FakeHealthChannel(rpc_error(grpc.StatusCode.UNAVAILABLE)))
    ready = down.get("/readyz")
    assert ready.status_code == 200  # degraded pages are still pages: stay in rotation
    assert ready.json() == {"status": "ready", "recommendations": "UNAVAILABLE"}
    metrics = web.get("/metrics")
    assert metrics.status_code == 200
    assert "text/plain" in metrics.headers["content-type"]


def test_request_id_is_returned_and_made_when_missing() -> None:
    web = client(FakeRecommendations(BOOKS))
    assert web.get("/", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    assert re.match(r"^[0-9a-f]{32}$", web.get("/").headers["X-Request-ID"])
    assert re.match(r"^[0-9a-f]{32}$", web.get("/", headers={"X-Request-ID": "bad id\n"}).headers["X-Request-ID"])


def test_stylesheet_is_served() -> None:
    response = client(FakeRecommendations(BOOKS)).get("/static/style.css")
    assert response.status_code == 200
    assert "text/css" in response.headers["content-type"]


@pytest.mark.parametrize(
    "path", ["/", "/category/mystery", "/api/recommendations?category=mystery", "/nope", "/static/style.css"]
)
def test_every_response_carries_the_security_headers(path: str) -> None:
    response = client(FakeRecommendations(BOOKS)).get(path)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"
    assert "strict-transport-security" not in response.headers  # plain HTTP: HSTS would be ignored anyway


def test_over_https_the_cookie_is_secure_and_hsts_is_sent() -> None:
    app = create_app(as_stub(FakeRecommendations(BOOKS)), timeout=0.25)
    response = TestClient(app, base_url="https://books.example.com").get("/?user=7")
    assert "Secure" in response.headers["set-cookie"]
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    plain = TestClient(app).get("/?user=7")
    assert "Secure" not in plain.headers["set-cookie"]


def test_no_redirect_built_from_the_host_header() -> None:
    """/static used to redirect to http://<whatever Host said>/static/."""
    web = TestClient(create_app(as_stub(FakeRecommendations(BOOKS)), timeout=0.25), follow_redirects=False)
    response = web.get("/static", headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert "evil.example" not in response.text


@pytest.mark.parametrize("user", ["٣", "３", "1٣", "²", "+1", "1_000", " 1"])
def test_a_user_id_is_ascii_digits_only(user: str) -> None:
    stub = FakeRecommendations(BOOKS)
    response = client(stub).get("/", params={"user": user})
    if user == " 1":  # surrounding spaces are trimmed, as before
        assert response.status_code == 200
        return
    assert response.status_code == 400, user
    assert not stub.calls


def test_every_answer_is_counted_by_route_and_status() -> None:
    web = client(FakeRecommendations(BOOKS))

    def count(route: str, status: str) -> float:
        labels = {"method": "GET", "route": route, "status": status, "status_class": f"{status[0]}xx"}
        return prometheus_client.REGISTRY.get_sample_value("http_requests_total", labels) or 0.0

    before = count("/category/{name}", "200"), count("/", "400"), count("unmatched", "404")
    web.get("/category/mystery")
    web.get("/?user=x")
    web.get("/no/such/page")
    assert (count("/category/{name}", "200"), count("/", "400"), count("unmatched", "404")) == (
        before[0] + 1,
        before[1] + 1,
        before[2] + 1,
    )


def test_requests_in_flight_and_their_duration_by_method_and_route() -> None:
    seen_in_flight: list[float] = []

    class Watching(FakeRecommendations):
        async def Recommend(self, request: Any, timeout: float | None = None) -> Any:
            seen_in_flight.append(prometheus_client.REGISTRY.get_sample_value("http_requests_in_flight") or 0.0)
            return await super().Recommend(request, timeout)

    def durations() -> float:
        labels = {"method": "GET", "route": "/category/{name}"}
        return prometheus_client.REGISTRY.get_sample_value("http_request_duration_seconds_count", labels) or 0.0

    before = durations()
    assert client(Watching(BOOKS)).get("/category/mystery").status_code == 200
    assert seen_in_flight == [1.0]  # the page being answered
    assert prometheus_client.REGISTRY.get_sample_value("http_requests_in_flight") == 0.0
    assert durations() == before + 1


def test_the_ingress_publishes_exactly_the_sites_routes() -> None:
    """The list's `public` paths (what the prod Ingress routes here) cover every route but the probes, and
    each names one."""
    app = create_app(as_stub(FakeRecommendations(BOOKS)), 0.3)
    site = [re.sub(r"\{[^}]+\}", "x", route.path) for route in app.routes]  # type: ignore[attr-defined]
    public = REGISTRY["marketplace"].public
    for path in site:
        assert any(routes(each, path) for each in public) == (path not in PROBES), path
    for each in public:
        assert any(routes(each, path) for path in site), each
