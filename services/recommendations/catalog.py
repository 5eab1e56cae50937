"""The book catalog: a CSV file in the repository, loaded into an in-memory SQLite database.

The CSV (`data/books.csv`: id,category,title,author,year) is the readable source of truth; SQLite
gives indexed, random sampling per category without holding Python lists per query.
"""

from __future__ import annotations

import csv
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

    def __init__(self, books: Iterable[Book], categories: Iterable[str]) -> None:
        """`categories` are the names a book may have (the API's enum names)."""
        self._categories = frozenset(categories)
        # Queried from the server's executor threads: one connection, used under a lock (queries take µs).
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

    @classmethod
    def from_csv(cls, path: Path, categories: Iterable[str]) -> Catalog:
        return cls(read_books(path), categories)

    def sample(self, category: str, limit: int) -> list[Book]:
        """Up to `limit` distinct books of `category` in random order; [] if it has none."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, category, title, author, year FROM books WHERE category = ? ORDER BY random() LIMIT ?",
                (category, limit),
            ).fetchall()
        return [Book(*row) for row in rows]

    def count(self, category: str | None = None) -> int:
        with self._lock:
            if category is None:
                return self._db.execute("SELECT count(*) FROM books").fetchone()[0]
            return self._db.execute("SELECT count(*) FROM books WHERE category = ?", (category,)).fetchone()[0]


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
