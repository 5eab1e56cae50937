"""A catalog for tests whose queries block, as a slow disk or a heavy query would."""

from __future__ import annotations

import threading

from services.recommendations.catalog import Book, Catalog
from services.recommendations.servicer import category_names


class SlowCatalog(Catalog):
    """Every query blocks its thread until `parties` queries are blocked at once: they all return only if
    they overlap. One that waits `timeout` seconds for the others raises threading.BrokenBarrierError (so
    does every query waiting with it), and its call fails."""

    blocking = True

    def __init__(self, books: list[Book], parties: int, timeout: float = 10.0) -> None:
        super().__init__(books, category_names())
        self._all_at_once = threading.Barrier(parties)
        self._timeout = timeout

    def sample(self, category: str, limit: int) -> list[Book]:
        self._all_at_once.wait(self._timeout)
        return super().sample(category, limit)
