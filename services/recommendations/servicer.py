"""The RecommendationService handler: validates a request and samples the catalog.

Errors are raised as grpc-interceptor exceptions; libs/interceptors turns them into statuses.
"""

from __future__ import annotations

import grpc
from grpc_interceptor.exceptions import InvalidArgument, NotFound

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from services.recommendations.catalog import Catalog

MAX_RESULTS_CAP = 20
"""Largest max_results a request may ask for (documented in recommendations.proto)."""


def category_names() -> list[str]:
    """The categories a book may have: every enum value but UNSPECIFIED."""
    return [value.name for value in catalog_pb2.BookCategory.DESCRIPTOR.values if value.number != 0]


def validate(request: recommendations_pb2.RecommendRequest) -> str:
    """Returns the category name of a valid request; raises InvalidArgument naming every bad field."""
    problems = []
    if request.user_id < 1:
        problems.append(f"user_id must be a positive id, got {request.user_id}")
    category = ""
    if request.category == catalog_pb2.BOOK_CATEGORY_UNSPECIFIED:
        problems.append("category is required")
    elif request.category not in catalog_pb2.BookCategory.values():
        problems.append(f"category {request.category} is not a known BookCategory")
    else:
        category = catalog_pb2.BookCategory.Name(request.category)
    if not 1 <= request.max_results <= MAX_RESULTS_CAP:
        problems.append(f"max_results must be between 1 and {MAX_RESULTS_CAP}, got {request.max_results}")
    if problems:
        raise InvalidArgument("; ".join(problems))
    return category


class RecommendationServicer(recommendations_pb2_grpc.RecommendationServiceServicer):
    """Recommends random distinct books of a category from the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def Recommend(
        self, request: recommendations_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommendations_pb2.RecommendResponse:
        category = validate(request)
        books = self._catalog.sample(category, request.max_results)
        if not books:
            raise NotFound(f"no books in category {category}")
        return recommendations_pb2.RecommendResponse(
            recommendations=[
                recommendations_pb2.BookRecommendation(
                    id=book.id, title=book.title, author=book.author, year=book.year, category=request.category
                )
                for book in books
            ]
        )
