"""The RecommendationService handler: checks a request against its rules and samples the catalog.

The rules of every field are in recommendations.proto (libs/validation applies them). Errors are raised
as exceptions (BadRequest with one violation per bad field, NotFound);
libs/interceptors turns them into statuses. The handlers are plain functions: the service is served by
threads (services/services.bzl), each call on a worker thread of its own; RecommendEach overlaps the
queries of a catalog whose queries may block on the runtime's bounded executor.
"""

from __future__ import annotations

from concurrent.futures import Executor

import grpc
from grpc_interceptor.exceptions import NotFound

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.validation import rules
from services.recommendations.catalog import Book, Catalog

SERVICE_NAME = recommendations_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name

# By number, once: BookCategory.values() builds a new list on every call.
_CATEGORY_NAMES = {value.number: value.name for value in catalog_pb2.BookCategory.DESCRIPTOR.values if value.number}


def category_names() -> list[str]:
    """The categories a book may have: every enum value but UNSPECIFIED."""
    return list(_CATEGORY_NAMES.values())


class RecommendationServicer(recommendations_pb2_grpc.RecommendationServiceServicer):
    """Recommends random distinct books of a category from the catalog."""

    def __init__(self, catalog: Catalog, executor: Executor) -> None:
        self._catalog = catalog
        self._executor = executor

    def Recommend(
        self, request: recommendations_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommendations_pb2.RecommendResponse:
        rules.check(request)
        category = _CATEGORY_NAMES[request.category]
        books = self._catalog.sample(category, request.max_results)
        if not books:
            raise NotFound(f"no books in category {category}")
        return recommendations_pb2.RecommendResponse(recommendations=_messages(books, request.category))

    def RecommendEach(
        self, request: recommendations_pb2.RecommendEachRequest, context: grpc.ServicerContext
    ) -> recommendations_pb2.RecommendEachResponse:
        rules.check(request)
        names = [_CATEGORY_NAMES[value] for value in request.categories]
        if self._catalog.blocking:  # overlap the blocking queries on the executor
            shelves = list(self._executor.map(lambda name: self._catalog.sample(name, request.max_results), names))
        else:  # microseconds each: a thread hop per category would cost more than the work
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
