"""Unit tests of the Recommend handler and the catalog, without a network."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_interceptor.exceptions import NotFound

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2
from libs.interceptors.errors import BadRequest, FieldViolation
from libs.validation import rules
from services.recommendations.catalog import DEFAULT_CATALOG, Book, Catalog, CatalogError, read_books
from services.recommendations.servicer import RecommendationServicer, category_names
from services.recommendations.testing.slow_catalog import SlowCatalog

MYSTERIES = [Book(i, "MYSTERY", f"Mystery {i}", f"Author {i}", 1900 + i) for i in range(1, 6)]


EXECUTOR = ThreadPoolExecutor(4)

# The handlers never look at their context; there is no call here to give them one.
NO_CONTEXT = cast(grpc.ServicerContext, None)


def recommend(catalog: Catalog, **fields) -> recommendations_pb2.RecommendResponse:
    request = recommendations_pb2.RecommendRequest(**{"user_id": 1, "category": catalog_pb2.MYSTERY, **fields})
    return RecommendationServicer(catalog, EXECUTOR).Recommend(request, NO_CONTEXT)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(MYSTERIES, category_names())


def test_max_results_one_gives_one_book(catalog: Catalog) -> None:
    response = recommend(catalog, max_results=1)
    assert len(response.recommendations) == 1


def test_returns_distinct_books_of_the_category_with_all_fields(catalog: Catalog) -> None:
    response = recommend(catalog, max_results=3)
    ids = [book.id for book in response.recommendations]
    assert len(ids) == len(set(ids)) == 3
    by_id = {book.id: book for book in MYSTERIES}
    for got in response.recommendations:
        expected = by_id[got.id]
        assert (got.title, got.author, got.year) == (expected.title, expected.author, expected.year)
        assert got.category == catalog_pb2.MYSTERY


def test_fewer_books_than_asked_returns_them_all(catalog: Catalog) -> None:
    response = recommend(catalog, max_results=20)
    assert sorted(book.id for book in response.recommendations) == [1, 2, 3, 4, 5]


def test_samples_vary_between_calls(catalog: Catalog) -> None:
    seen = {tuple(b.id for b in recommend(catalog, max_results=2).recommendations) for _ in range(50)}
    assert len(seen) > 1


def test_empty_category_is_not_found(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="no books in category FANTASY"):
        recommend(catalog, category=catalog_pb2.FANTASY, max_results=3)


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"max_results": 0}, FieldViolation("max_results", "must be between 1 and 20, got 0")),
        ({"max_results": 21}, FieldViolation("max_results", "must be between 1 and 20, got 21")),
        ({"max_results": -5}, FieldViolation("max_results", "must be between 1 and 20, got -5")),
        ({"max_results": 3, "user_id": 0}, FieldViolation("user_id", "must be greater than 0, got 0")),
        (
            {"max_results": 3, "category": catalog_pb2.BOOK_CATEGORY_UNSPECIFIED},
            FieldViolation("category", "is required"),
        ),
        ({"max_results": 3, "category": 99}, FieldViolation("category", "99 is not a known BookCategory")),
    ],
)
def test_bad_fields_are_bad_requests(catalog: Catalog, fields: dict, violation: FieldViolation) -> None:
    with pytest.raises(BadRequest) as raised:
        recommend(catalog, **fields)
    assert raised.value.violations == [violation]
    assert raised.value.details == str(violation)


def test_every_bad_field_is_reported_at_once(catalog: Catalog) -> None:
    with pytest.raises(BadRequest) as raised:
        recommend(catalog, user_id=-1, category=0, max_results=0)
    assert [v.field for v in raised.value.violations] == ["user_id", "category", "max_results"]
    status = raised.value.status_proto()
    assert status.code == 3  # google.rpc.Code.INVALID_ARGUMENT
    assert len(status.details) == 1


def test_recommend_each_overlaps_the_blocking_queries_of_its_categories() -> None:
    categories = category_names()[:5]
    books = [Book(i, name, f"Book {i}", f"Author {i}", 1900 + i) for i, name in enumerate(categories, 1)]
    servicer = RecommendationServicer(SlowCatalog(books, parties=5), ThreadPoolExecutor(5))
    request = recommendations_pb2.RecommendEachRequest(
        user_id=1, categories=[catalog_pb2.BookCategory.Value(name) for name in categories], max_results=1
    )
    # Each query blocks until all five are blocked at once: one after the other, the first would wait
    # until its barrier broke.
    try:
        response = servicer.RecommendEach(request, NO_CONTEXT)
    except threading.BrokenBarrierError:
        pytest.fail("the 5 blocking queries of one call did not overlap")
    assert [len(shelf.recommendations) for shelf in response.categories] == [1] * 5


def recommend_each(catalog: Catalog, **fields) -> recommendations_pb2.RecommendEachResponse:
    request = recommendations_pb2.RecommendEachRequest(**{"user_id": 1, "max_results": 2, **fields})
    return RecommendationServicer(catalog, EXECUTOR).RecommendEach(request, NO_CONTEXT)


def test_recommend_each_answers_every_category_in_order(catalog: Catalog) -> None:
    response = recommend_each(catalog, categories=[catalog_pb2.FANTASY, catalog_pb2.MYSTERY])
    assert [shelf.category for shelf in response.categories] == [catalog_pb2.FANTASY, catalog_pb2.MYSTERY]
    assert len(response.categories[0].recommendations) == 0  # no fantasy in this catalog: empty, not an error
    mysteries = response.categories[1].recommendations
    assert len({book.id for book in mysteries}) == 2
    assert {book.category for book in mysteries} == {catalog_pb2.MYSTERY}


def test_recommend_each_names_every_bad_field(catalog: Catalog) -> None:
    with pytest.raises(BadRequest) as raised:
        recommend_each(catalog, user_id=0, categories=[catalog_pb2.MYSTERY, 0, 42, catalog_pb2.MYSTERY], max_results=0)
    assert raised.value.violations == [
        FieldViolation("user_id", "must be greater than 0, got 0"),
        FieldViolation("categories", "must not repeat an item"),
        FieldViolation("categories[1]", "is required"),
        FieldViolation("categories[2]", "42 is not a known BookCategory"),
        FieldViolation("max_results", "must be between 1 and 20, got 0"),
    ]
    with pytest.raises(BadRequest) as raised:
        recommend_each(catalog, categories=[])
    assert raised.value.violations == [FieldViolation("categories", "must have at least one item, got 0")]


def test_recommend_each_refuses_a_million_categories_with_one_violation(catalog: Catalog) -> None:
    """The attack that stalled every caller for 5.8 s: the list is refused by its length, unread."""
    with pytest.raises(BadRequest) as raised:
        recommend_each(catalog, categories=[7] * 1_000_000, max_results=99)
    assert raised.value.violations == [
        FieldViolation("categories", f"must have at most {len(category_names())} items, got 1000000"),
        FieldViolation("max_results", "must be between 1 and 20, got 99"),
    ]


def test_bundled_catalog_has_at_least_ten_books_per_category() -> None:
    catalog = Catalog.from_csv(DEFAULT_CATALOG, category_names())
    assert catalog.count() >= 60
    for name in category_names():
        assert catalog.count(name) >= 10, name
    books = read_books(DEFAULT_CATALOG)
    assert len({(b.title, b.author) for b in books}) == len(books)


def test_catalog_rejects_unknown_category() -> None:
    with pytest.raises(CatalogError, match="unknown category 'POETRY'"):
        Catalog([Book(1, "POETRY", "Leaves of Grass", "Walt Whitman", 1855)], category_names())


def test_catalog_rejects_duplicate_ids() -> None:
    with pytest.raises(CatalogError, match="duplicate book id 1"):
        Catalog([MYSTERIES[0], MYSTERIES[0]], category_names())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,title\n1,x\n", "header must be id,category,title,author,year"),
        ("id,category,title,author,year\nx,MYSTERY,T,A,1900\n", ":2: invalid literal"),
        ("id,category,title,author,year\n1,MYSTERY,,A,1900\n", ":2: title and author are required"),
    ],
)
def test_malformed_csv_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "books.csv"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        read_books(path)


def test_a_request_may_name_every_category_once() -> None:
    """recommendations.proto's max_items of `categories` is the number of categories BookCategory has."""
    field = recommendations_pb2.RecommendEachRequest.DESCRIPTOR.fields_by_name["categories"]
    assert rules.json_schema(field)["maxItems"] == len(category_names())
