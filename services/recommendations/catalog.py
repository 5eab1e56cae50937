"""The book catalog: a CSV file in the repository, loaded into an in-memory SQLite database.

The CSV (`data/books.csv`: id,category,title,author,year) is the readable source of truth. SQLite
holds and checks it (primary key, category index) and answers the catalog's queries. The catalog is
immutable once loaded, so the hot path — a random sample of one category — reads a per-category
snapshot taken from SQLite at load: it is CPU-only and takes microseconds, so it runs on the calling
thread (`blocking = False`) instead of paying a thread hop per category (measured in bench/interceptors:
the executor hop and SQLite's lock cost more than the rest of the request).
"""

from __future__ import annotations

import csv
import random
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CATALOG = Path(__file__).parent / "data" / "books.csv"
_COLUMNS = ["id", "category", "title", "author", "year"]


@dataclass(frozen=True)
class Book:
    id: int
    category: str
    title: str
    author: str
    year: int


class CatalogError(ValueError):
    """The catalog file is malformed; the message says where."""


class Catalog:
    """Books by category, answering random samples of distinct books."""

    blocking = False
    """Whether `sample` may block (then RecommendEach overlaps its queries on the executor)."""

    def __init__(self, books: Iterable[Book], categories: Iterable[str]) -> None:
        """`categories` are the names a book may have (the API's enum names)."""
        self._categories = frozenset(categories)
        # SQL may run on executor threads (see `blocking`): one connection, used under a lock.
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute(
            "CREATE TABLE books (id INTEGER PRIMARY KEY, category TEXT NOT NULL, title TEXT NOT NULL,"
            " author TEXT NOT NULL, year INTEGER NOT NULL)"
        )
        self._db.execute("CREATE INDEX books_by_category ON books (category)")
        for book in books:
            if book.category not in self._categories:
                raise CatalogError(f"book {book.id} has unknown category {book.category!r}")
            try:
                self._db.execute("INSERT INTO books VALUES (?, ?, ?, ?, ?)", _row(book))
            except sqlite3.IntegrityError as error:
                raise CatalogError(f"duplicate book id {book.id}") from error
        self._db.commit()
        self._by_category: dict[str, list[Book]] = {}
        for row in self._db.execute("SELECT id, category, title, author, year FROM books ORDER BY id"):
            book = Book(*row)
            self._by_category.setdefault(book.category, []).append(book)

    @classmethod
    def from_csv(cls, path: Path, categories: Iterable[str]) -> Catalog:
        return cls(read_books(path), categories)

    def sample(self, category: str, limit: int) -> list[Book]:
        """Up to `limit` distinct books of `category` in random order; [] if it has none."""
        books = self._by_category.get(category, ())
        return random.sample(books, min(limit, len(books)))

    def count(self, category: str | None = None) -> int:
        with self._lock:
            # sqlite3 rows are untyped; count(*) gives exactly one integer column.
            row: tuple[int]
            if category is None:
                row = self._db.execute("SELECT count(*) FROM books").fetchone()
                return row[0]
            row = self._db.execute("SELECT count(*) FROM books WHERE category = ?", (category,)).fetchone()
            return row[0]


def _row(book: Book) -> tuple[int, str, str, str, int]:
    return (book.id, book.category, book.title, book.author, book.year)


def read_books(path: Path) -> list[Book]:
    """Parses the catalog CSV, naming the file and line of the first bad row."""
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != _COLUMNS:
            raise CatalogError(f"{path}: header must be {','.join(_COLUMNS)}, got {reader.fieldnames}")
        books = []
        for row in reader:
            try:
                book = Book(
                    id=int(row["id"]),
                    category=row["category"].strip(),
                    title=row["title"].strip(),
                    author=row["author"].strip(),
                    year=int(row["year"]),
                )
            except (TypeError, ValueError) as error:
                raise CatalogError(f"{path}:{reader.line_num}: {error}") from error
            if not (book.title and book.author):
                raise CatalogError(f"{path}:{reader.line_num}: title and author are required")
            books.append(book)
    return books
