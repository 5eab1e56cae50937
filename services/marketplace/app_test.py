"""Tests of the Marketplace pages against a fake Recommendations stub (no network)."""

from __future__ import annotations

import grpc
from starlette.testclient import TestClient

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2
from libs.interceptors.deadlines import time_remaining
from libs.interceptors.errors import BadRequest, FieldViolation
from services.marketplace.app import HOME_MAX_RESULTS, INVALID_NOTICE, UNAVAILABLE_NOTICE, create_app

BOOKS = [
    recommendations_pb2.BookRecommendation(
        id=1, title="Murder on the Orient Express", author="Agatha Christie", year=1934
    ),
    recommendations_pb2.BookRecommendation(id=2, title="The Big Sleep", author="Raymond Chandler", year=1939),
    recommendations_pb2.BookRecommendation(id=3, title="Rebecca", author="Daphne du Maurier", year=1938),
]


class FakeRecommendations:
    """Stands in for RecommendationServiceStub: records requests, answers or fails as told."""

    def __init__(self, books=(), error: grpc.aio.AioRpcError | None = None) -> None:
        self.books, self.error, self.calls = list(books), error, []

    async def Recommend(self, request, timeout=None):
        self.calls.append((request, time_remaining()))
        if self.error:
            raise self.error
        return recommendations_pb2.RecommendResponse(recommendations=self.books)


def rpc_error(code: grpc.StatusCode, details: str, trailers: tuple = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details=details)


def get_home(stub: FakeRecommendations, path: str = "/"):
    with TestClient(create_app(stub, timeout=0.25)) as client:
        return client.get(path)


def test_home_lists_the_recommended_mysteries() -> None:
    response = get_home(FakeRecommendations(BOOKS))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Online Books For You</title>" in response.text
    assert ">Mystery books you may like</h1>" in response.text
    assert response.text.count("<li>") == 3
    for book in BOOKS:
        assert book.title in response.text
        assert f"by {book.author}" in response.text
        assert f"({book.year})" in response.text
    assert UNAVAILABLE_NOTICE not in response.text


def test_home_asks_for_mysteries_within_the_page_budget() -> None:
    stub = FakeRecommendations(BOOKS)
    get_home(stub)
    [(request, remaining)] = stub.calls
    assert (request.user_id, request.category, request.max_results) == (1, catalog_pb2.MYSTERY, HOME_MAX_RESULTS)
    assert 0 < remaining <= 0.25


def test_user_query_parameter_picks_the_shopper() -> None:
    stub = FakeRecommendations(BOOKS)
    get_home(stub, "/?user=42")
    assert stub.calls[0][0].user_id == 42


def test_non_numeric_user_is_a_400_page_without_calling_the_backend() -> None:
    stub = FakeRecommendations(BOOKS)
    response = get_home(stub, "/?user=<b>x</b>")
    assert response.status_code == 400
    assert INVALID_NOTICE in response.text
    assert "user: must be a whole number" in response.text
    assert "<b>x</b>" not in response.text
    assert not stub.calls


def test_backend_field_violations_become_a_400_page_with_human_messages() -> None:
    bad = BadRequest([FieldViolation("user_id", "must be a positive id, got 0")])
    trailers = (("grpc-status-details-bin", bad.status_proto().SerializeToString()),)
    response = get_home(FakeRecommendations(error=rpc_error(grpc.StatusCode.INVALID_ARGUMENT, bad.details, trailers)))
    assert response.status_code == 400
    assert INVALID_NOTICE in response.text
    assert '<li class="problem">user_id: must be a positive id, got 0</li>' in response.text


def test_backend_failure_shows_a_notice_instead_of_a_500() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        response = get_home(FakeRecommendations(error=rpc_error(code, "backend trouble")))
        assert response.status_code == 200
        assert UNAVAILABLE_NOTICE in response.text
        assert "<li>" not in response.text
        assert "backend trouble" not in response.text


def test_titles_are_escaped() -> None:
    evil = recommendations_pb2.BookRecommendation(id=9, title="<script>alert('x')</script>", author="A & B", year=2000)
    response = get_home(FakeRecommendations([evil]))
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text
    assert "A &amp; B" in response.text


def test_stylesheet_is_served() -> None:
    with TestClient(create_app(FakeRecommendations(BOOKS), timeout=0.25)) as client:
        response = client.get("/static/style.css")
    assert response.status_code == 200
    assert "text/css" in response.headers["content-type"]
