"""The RecommendationService handler: validates a request and samples the catalog.

Errors are raised as exceptions (BadRequest with one violation per bad field, NotFound);
libs/interceptors turns them into statuses. A catalog whose queries may block runs them on the
bounded executor the runtime provides, so the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

import grpc
from grpc_interceptor.exceptions import NotFound

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.interceptors.errors import BadRequest, FieldViolation
from services.recommendations.catalog import Book, Catalog

SERVICE_NAME = recommendations_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name

# By number, once: BookCategory.values() builds a new list on every call.
_CATEGORY_NAMES = {value.number: value.name for value in catalog_pb2.BookCategory.DESCRIPTOR.values if value.number}

MAX_RESULTS_CAP = 20
"""Largest max_results a request may ask for (documented in recommendations.proto)."""


def category_names() -> list[str]:
    """The categories a book may have: every enum value but UNSPECIFIED."""
    return list(_CATEGORY_NAMES.values())


def _category_name(value: catalog_pb2.BookCategory.ValueType, field: str, violations: list[FieldViolation]) -> str:
    if name := _CATEGORY_NAMES.get(value):
        return name
    if value == catalog_pb2.BOOK_CATEGORY_UNSPECIFIED:
        violations.append(FieldViolation(field, "is required"))
    else:
        violations.append(FieldViolation(field, f"{value} is not a known BookCategory"))
    return ""


def _common(
    request: recommendations_pb2.RecommendRequest | recommendations_pb2.RecommendEachRequest,
    violations: list[FieldViolation],
) -> None:
    if request.user_id < 1:
        violations.append(FieldViolation("user_id", f"must be a positive id, got {request.user_id}"))


def _max_results(
    request: recommendations_pb2.RecommendRequest | recommendations_pb2.RecommendEachRequest,
    violations: list[FieldViolation],
) -> None:
    if not 1 <= request.max_results <= MAX_RESULTS_CAP:
        violations.append(
            FieldViolation("max_results", f"must be between 1 and {MAX_RESULTS_CAP}, got {request.max_results}")
        )


def validate(request: recommendations_pb2.RecommendRequest) -> str:
    """Returns the category name of a valid request; raises BadRequest naming every bad field."""
    violations: list[FieldViolation] = []
    _common(request, violations)
    category = _category_name(request.category, "category", violations)
    _max_results(request, violations)
    if violations:
        raise BadRequest(violations)
    return category


def validate_each(request: recommendations_pb2.RecommendEachRequest) -> list[str]:
    """Returns the category names of a valid RecommendEach request; raises BadRequest otherwise.

    More categories than BookCategory has is refused before any entry is looked at: the work per
    request stays bounded however long the list an attacker sends."""
    violations: list[FieldViolation] = []
    _common(request, violations)
    most = len(category_names())
    if len(request.categories) > most:
        violations.append(
            FieldViolation("categories", f"must name at most {most} categories, got {len(request.categories)}")
        )
        _max_results(request, violations)
        raise BadRequest(violations)
    if not request.categories:
        violations.append(FieldViolation("categories", "must name at least one category"))
    names = [_category_name(value, f"categories[{i}]", violations) for i, value in enumerate(request.categories)]
    if len(set(request.categories)) != len(request.categories):
        violations.append(FieldViolation("categories", "must not name a category twice"))
    _max_results(request, violations)
    if violations:
        raise BadRequest(violations)
    return names


class RecommendationServicer(recommendations_pb2_grpc.RecommendationServiceServicer):
    """Recommends random distinct books of a category from the catalog."""

    def __init__(self, catalog: Catalog, executor: Executor) -> None:
        self._catalog = catalog
        self._executor = executor

    async def _sample(self, category: str, limit: int) -> list[Book]:
        if self._catalog.blocking:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._catalog.sample, category, limit)
        return self._catalog.sample(category, limit)

    async def Recommend(
        self, request: recommendations_pb2.RecommendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> recommendations_pb2.RecommendResponse:
        category = validate(request)
        books = await self._sample(category, request.max_results)
        if not books:
            raise NotFound(f"no books in category {category}")
        return recommendations_pb2.RecommendResponse(recommendations=_messages(books, request.category))

    async def RecommendEach(
        self, request: recommendations_pb2.RecommendEachRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> recommendations_pb2.RecommendEachResponse:
        names = validate_each(request)
        if self._catalog.blocking:  # overlap the blocking queries on the executor
            shelves = await asyncio.gather(*(self._sample(name, request.max_results) for name in names))
        else:  # microseconds each: a task per category would cost more than the work
            shelves = [self._catalog.sample(name, request.max_results) for name in names]
        return recommendations_pb2.RecommendEachResponse(
            categories=[
                recommendations_pb2.CategoryRecommendations(category=value, recommendations=_messages(books, value))
                for value, books in zip(request.categories, shelves, strict=True)
            ]
        )


def _messages(
    books: list[Book], category: catalog_pb2.BookCategory.ValueType
) -> list[recommendations_pb2.BookRecommendation]:
    return [
        recommendations_pb2.BookRecommendation(
            id=book.id, title=book.title, author=book.author, year=book.year, category=category
        )
        for book in books
    ]
