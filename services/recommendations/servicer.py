"""The RecommendationService handler: validates a request and samples the catalog.

Errors are raised as exceptions (BadRequest with one violation per bad field, NotFound);
libs/interceptors turns them into statuses. A catalog whose queries may block runs them on the
bounded executor the runtime provides, so the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import grpc
from grpc_interceptor.exceptions import NotFound

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.interceptors.errors import BadRequest, FieldViolation
from services.recommendations.catalog import Catalog

SERVICE_NAME = recommendations_pb2.DESCRIPTOR.services_by_name["RecommendationService"].full_name
DEFAULT_POLICY = {"Recommend": ["marketplace"]}
"""Under mTLS, only the marketplace may ask for recommendations (override with --allow)."""

MAX_RESULTS_CAP = 20
"""Largest max_results a request may ask for (documented in recommendations.proto)."""


def category_names() -> list[str]:
    """The categories a book may have: every enum value but UNSPECIFIED."""
    return [value.name for value in catalog_pb2.BookCategory.DESCRIPTOR.values if value.number != 0]


def validate(request: recommendations_pb2.RecommendRequest) -> str:
    """Returns the category name of a valid request; raises BadRequest naming every bad field."""
    violations = []
    if request.user_id < 1:
        violations.append(FieldViolation("user_id", f"must be a positive id, got {request.user_id}"))
    category = ""
    if request.category == catalog_pb2.BOOK_CATEGORY_UNSPECIFIED:
        violations.append(FieldViolation("category", "is required"))
    elif request.category not in catalog_pb2.BookCategory.values():
        violations.append(FieldViolation("category", f"{request.category} is not a known BookCategory"))
    else:
        category = catalog_pb2.BookCategory.Name(request.category)
    if not 1 <= request.max_results <= MAX_RESULTS_CAP:
        violations.append(
            FieldViolation("max_results", f"must be between 1 and {MAX_RESULTS_CAP}, got {request.max_results}")
        )
    if violations:
        raise BadRequest(violations)
    return category


class RecommendationServicer(recommendations_pb2_grpc.RecommendationServiceServicer):
    """Recommends random distinct books of a category from the catalog."""

    def __init__(self, catalog: Catalog, executor: Executor) -> None:
        self._catalog = catalog
        self._executor = executor

    async def Recommend(
        self, request: recommendations_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommendations_pb2.RecommendResponse:
        category = validate(request)
        if self._catalog.blocking:
            loop = asyncio.get_running_loop()
            books = await loop.run_in_executor(self._executor, self._catalog.sample, category, request.max_results)
        else:
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
