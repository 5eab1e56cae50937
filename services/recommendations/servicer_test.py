"""Unit tests of the Recommend handler and the catalog, without a network."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpc_interceptor.exceptions import InvalidArgument, NotFound

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2
from services.recommendations.catalog import DEFAULT_CATALOG, Book, Catalog, CatalogError, read_books
from services.recommendations.servicer import MAX_RESULTS_CAP, RecommendationServicer, category_names

MYSTERIES = [Book(i, "MYSTERY", f"Mystery {i}", f"Author {i}", 1900 + i) for i in range(1, 6)]


def recommend(catalog: Catalog, **fields) -> recommendations_pb2.RecommendResponse:
    request = recommendations_pb2.RecommendRequest(**{"user_id": 1, "category": catalog_pb2.MYSTERY, **fields})
    return asyncio.run(RecommendationServicer(catalog).Recommend(request, None))


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
    response = recommend(catalog, max_results=MAX_RESULTS_CAP)
    assert sorted(book.id for book in response.recommendations) == [1, 2, 3, 4, 5]


def test_samples_vary_between_calls(catalog: Catalog) -> None:
    seen = {tuple(b.id for b in recommend(catalog, max_results=2).recommendations) for _ in range(50)}
    assert len(seen) > 1


def test_empty_category_is_not_found(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="no books in category FANTASY"):
        recommend(catalog, category=catalog_pb2.FANTASY, max_results=3)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_results": 0}, "max_results must be between 1 and 20, got 0"),
        ({"max_results": MAX_RESULTS_CAP + 1}, "max_results must be between 1 and 20, got 21"),
        ({"max_results": -5}, "max_results must be between 1 and 20, got -5"),
        ({"max_results": 3, "user_id": 0}, "user_id must be a positive id, got 0"),
        ({"max_results": 3, "category": catalog_pb2.BOOK_CATEGORY_UNSPECIFIED}, "category is required"),
        ({"max_results": 3, "category": 99}, "category 99 is not a known BookCategory"),
    ],
)
def test_bad_fields_are_invalid_argument(catalog: Catalog, fields: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        recommend(catalog, **fields)
    assert raised.value.details == message


def test_every_bad_field_is_reported_at_once(catalog: Catalog) -> None:
    with pytest.raises(InvalidArgument) as raised:
        recommend(catalog, user_id=-1, category=0, max_results=0)
    assert raised.value.details.count(";") == 2
    for field in ("user_id", "category", "max_results"):
        assert field in raised.value.details


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
