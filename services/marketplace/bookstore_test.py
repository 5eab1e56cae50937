"""Integration tests: the two built binaries as separate processes on free loopback ports."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from books.catalog.v1 import catalog_pb2
from books.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from libs.interceptors.errors import FieldViolation, field_violations
from libs.processes.processes import ChildProcess, free_port, free_ports, runfile
from libs.runtime.tls import TlsFiles, channel_credentials
from tools.certs.certs import mint_all, service_flags

# The binaries, as paths in the runfiles (looked up when a test starts them).
RECOMMENDATIONS = "services/recommendations/recommendations"
MARKETPLACE = "services/marketplace/marketplace"
NOTICE = "Recommendations are unavailable right now"

# A catalog of our own: known titles, and FANTASY left empty for the NOT_FOUND path.
TEST_BOOKS = [
    (1, "MYSTERY", "The Big Sleep", "Raymond Chandler", 1939),
    (2, "MYSTERY", "Rebecca", "Daphne du Maurier", 1938),
    (3, "MYSTERY", "The Maltese Falcon", "Dashiell Hammett", 1930),
    (4, "MYSTERY", "The Moonstone", "Wilkie Collins", 1868),
    (5, "SCIENCE_FICTION", "Dune", "Frank Herbert", 1965),
    (6, "HISTORY", "<script>alert('history')</script>", "Mallory & Co", 2001),
]


@dataclass
class Bookstore:
    recommendations: ChildProcess
    recommendations_port: int
    marketplace: ChildProcess
    marketplace_port: int
    certs: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.marketplace_port}/"


def write_catalog(path: Path) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "category", "title", "author", "year"])
        writer.writerows(TEST_BOOKS)
    return path


def start_recommendations(catalog: Path, port: int, certs: Path) -> ChildProcess:
    child = ChildProcess(
        "recommendations",
        [
            runfile(RECOMMENDATIONS),
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--catalog",
            catalog,
            "--drain-seconds",
            "0",
            *service_flags(certs, "recommendations"),
        ],
    ).start()
    child.wait_for_port(port)
    return child


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    mint_all(tmp_path / "certs")
    return tmp_path / "certs"


@pytest.fixture
def bookstore(tmp_path: Path, certs: Path) -> Iterator[Bookstore]:
    catalog = write_catalog(tmp_path / "books.csv")
    rec_port, web_port = free_ports(2)
    recommendations = start_recommendations(catalog, rec_port, certs)
    marketplace = ChildProcess(
        "marketplace",
        [
            runfile(MARKETPLACE),
            "--host",
            "127.0.0.1",
            "--port",
            web_port,
            "--recommendations-addr",
            f"127.0.0.1:{rec_port}",
            "--drain-seconds",
            "0",
            *service_flags(certs, "marketplace"),
        ],
    ).start()
    try:
        marketplace.wait_for_port(web_port)
        yield Bookstore(recommendations, rec_port, marketplace, web_port, certs)
    finally:
        assert marketplace.stop() == 0, "marketplace did not exit cleanly on SIGTERM"
        recommendations.stop()


def get(url: str) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), time.monotonic() - started


def recommend(bookstore: Bookstore, **fields) -> recommendations_pb2.RecommendResponse:
    """Calls Recommend as the marketplace would: mTLS with the marketplace's certificate."""
    certs = bookstore.certs
    credentials = channel_credentials(TlsFiles(certs / "marketplace.pem", certs / "marketplace.key", certs / "ca.pem"))
    request = recommendations_pb2.RecommendRequest(**{"user_id": 1, "max_results": 3, **fields})
    with grpc.secure_channel(f"127.0.0.1:{bookstore.recommendations_port}", credentials) as channel:
        return recommendations_pb2_grpc.RecommendationServiceStub(channel).Recommend(request, timeout=5)


def section(body: str, slug: str) -> str:
    start = body.index(f'id="{slug}-heading"')
    return body[start : body.index("</section>", start)]


def test_home_page_lists_three_mysteries(bookstore: Bookstore) -> None:
    status, body, _ = get(bookstore.url)
    assert status == 200
    assert "<title>Online Books For You</title>" in body
    assert ">Mystery books you may like</h1>" in body
    mystery = section(body, "mystery")
    assert mystery.count("<li><cite>") == 3
    mysteries = [title for _, category, title, _, _ in TEST_BOOKS if category == "MYSTERY"]
    assert sum(title in mystery for title in mysteries) == 3
    assert "Dune" in section(body, "science-fiction")
    assert "We have no fantasy books to recommend yet." in section(body, "fantasy")
    assert NOTICE not in body


def test_titles_from_the_backend_render_as_text(bookstore: Bookstore) -> None:
    _, body, _ = get(bookstore.url + "category/history")
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&#39;history&#39;)&lt;/script&gt;" in body
    assert "Mallory &amp; Co" in body


def test_category_page_and_unknown_category(bookstore: Bookstore) -> None:
    status, body, _ = get(bookstore.url + "category/mystery")
    assert status == 200
    assert body.count("<li><cite>") == 4  # all the test catalog has
    status, body, _ = get(bookstore.url + "category/poetry")
    assert status == 404
    assert "Page not found" in body


def get_json(url: str) -> tuple[int, dict]:
    status, body, _ = get(url)
    return status, json.loads(body)


def test_api_over_real_services(bookstore: Bookstore) -> None:
    status, body = get_json(bookstore.url + "api/recommendations?category=science-fiction&max_results=5")
    assert status == 200
    assert body["recommendations"] == [{"id": 5, "title": "Dune", "author": "Frank Herbert", "year": 1965}]
    status, body = get_json(bookstore.url + "api/recommendations?category=mystery&max_results=50&user_id=0")
    assert status == 400
    assert body["fields"] == [
        {"field": "user_id", "description": "must be greater than 0, got 0"},
        {"field": "max_results", "description": "must be between 1 and 20, got 50"},
    ]
    status, body = get_json(bookstore.url + "api/recommendations?category=fantasy")
    assert status == 404
    assert body == {"error": "no books in category FANTASY"}


def test_request_id_reaches_recommendations_access_log(bookstore: Bookstore) -> None:
    request = urllib.request.Request(bookstore.url, headers={"X-Request-ID": "checkout-7f3a"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["X-Request-ID"] == "checkout-7f3a"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        access = [
            json.loads(line) for line in list(bookstore.recommendations.lines) if '"request_id":"checkout-7f3a"' in line
        ]
        if access:
            break
        time.sleep(0.05)
    assert access, "the request id never reached Recommendations' access log"
    [line] = access  # the home page makes one RecommendEach call
    assert line["method"] == "/books.recommendations.v1.RecommendationService/RecommendEach"
    assert line["code"] == "OK"
    assert line["peer"] == "marketplace"  # the mTLS identity of the caller
    assert line["service"] == "recommendations"


def test_a_request_id_is_made_when_none_is_sent(bookstore: Bookstore) -> None:
    with urllib.request.urlopen(bookstore.url, timeout=10) as response:
        assert re.match(r"^[0-9a-f]{32}$", response.headers["X-Request-ID"])


def test_recommend_over_the_wire(bookstore: Bookstore) -> None:
    response = recommend(bookstore, category=catalog_pb2.SCIENCE_FICTION, max_results=5)
    assert [(b.title, b.author, b.year) for b in response.recommendations] == [("Dune", "Frank Herbert", 1965)]


def test_empty_category_is_not_found_over_the_wire(bookstore: Bookstore) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        recommend(bookstore, category=catalog_pb2.FANTASY)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no books in category FANTASY"


def test_bad_request_is_invalid_argument_over_the_wire(bookstore: Bookstore) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        recommend(bookstore, category=catalog_pb2.MYSTERY, max_results=0, user_id=0)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value) == [
        FieldViolation("user_id", "must be greater than 0, got 0"),
        FieldViolation("max_results", "must be between 1 and 20, got 0"),
    ]


def test_invalid_shopper_is_a_400_page_naming_the_field(bookstore: Bookstore) -> None:
    status, body, _ = get(bookstore.url + "?user=0")
    assert status == 400
    assert "user: must be a positive id, got 0" in body  # the page's own field, checked before any call


def test_page_degrades_while_recommendations_is_down_and_recovers(bookstore: Bookstore, tmp_path: Path) -> None:
    assert bookstore.recommendations.stop() == 0
    for _ in range(3):
        status, body, seconds = get(bookstore.url)
        assert status == 200
        assert NOTICE in body
        assert "<li><cite>" not in body
        assert seconds < 1.0, f"degraded page took {seconds:.2f}s"
    status, api, seconds = get(bookstore.url + "api/recommendations?category=mystery")
    assert status == 503
    assert json.loads(api)["error"] == "recommendations are unavailable right now"
    assert seconds < 1.0
    _, ready, _ = get(bookstore.url + "readyz")
    # Ready all the same (degraded pages are pages); any other service it calls is reported beside it.
    assert {key: json.loads(ready)[key] for key in ("status", "recommendations")} == {
        "status": "ready",
        "recommendations": "UNAVAILABLE",
    }

    bookstore.recommendations = start_recommendations(
        tmp_path / "books.csv", bookstore.recommendations_port, bookstore.certs
    )
    deadline = time.monotonic() + 20  # gRPC reconnect backoff decides when the channel comes back
    while time.monotonic() < deadline:
        _, body, _ = get(bookstore.url)
        if section(body, "mystery").count("<li><cite>") == 3:
            break
        time.sleep(0.2)
    assert section(body, "mystery").count("<li><cite>") == 3, "the page did not recover after Recommendations came back"
    _, ready, _ = get(bookstore.url + "readyz")
    assert {key: json.loads(ready)[key] for key in ("status", "recommendations")} == {
        "status": "ready",
        "recommendations": "SERVING",
    }


def test_marketplace_workers_share_the_port_and_stop_cleanly(certs: Path, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "books.csv")
    rec_port, web_port = free_ports(2)
    recommendations = start_recommendations(catalog, rec_port, certs)
    marketplace = ChildProcess(
        "marketplace",
        [
            runfile(MARKETPLACE), "--host", "127.0.0.1", "--port", web_port, "--processes", "2",
            "--drain-seconds", "0", "--recommendations-addr", f"127.0.0.1:{rec_port}",
            *service_flags(certs, "marketplace"),
        ],
    ).start()  # fmt: skip
    try:
        marketplace.wait_for_port(web_port)
        for _ in range(20):
            status, body, _ = get(f"http://127.0.0.1:{web_port}/")
            assert status == 200
            assert section(body, "mystery").count("<li><cite>") == 3
        assert marketplace.stop() == 0
    finally:
        marketplace.stop()
        recommendations.stop()
    started = {line.split("[")[1].split("]")[0] for line in marketplace.lines if "Started server process [" in line}
    assert len(started) == 2, "expected two worker processes"


def run_binary(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)


def test_recommendations_rejects_a_malformed_catalog(tmp_path: Path) -> None:
    catalog = tmp_path / "broken.csv"
    catalog.write_text("id,category,title,author,year\n1,POETRY,Leaves of Grass,Walt Whitman,1855\n")
    result = run_binary(runfile(RECOMMENDATIONS), "--port", str(free_port()), "--catalog", str(catalog), "--insecure")
    assert result.returncode == 2
    assert "cannot load catalog: book 1 has unknown category 'POETRY'" in result.stderr


def test_marketplace_rejects_a_bad_timeout() -> None:
    result = run_binary(
        runfile(MARKETPLACE), "--port", str(free_port()), "--recommendations-timeout", "0", "--insecure"
    )
    assert result.returncode == 2
    assert "--recommendations-timeout must be positive" in result.stderr


def test_servers_refuse_to_start_without_tls_or_insecure() -> None:
    for binary in (runfile(RECOMMENDATIONS), runfile(MARKETPLACE)):
        result = run_binary(binary, "--port", str(free_port()))
        assert result.returncode == 2
        assert "mTLS needs --tls-cert, --tls-key, --tls-ca (or --insecure for plaintext local work)" in result.stderr


def test_invalid_configuration_is_reported_all_at_once_before_binding(tmp_path: Path) -> None:
    result = run_binary(
        runfile(RECOMMENDATIONS), "--port", "70000", "--blocking-workers", "0",
        "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", "k", "--tls-ca", "c",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--port must be between 0 and 65535, got 70000" in result.stderr
    assert "--blocking-workers must be between 1 and 256, got 0" in result.stderr
    assert "cannot read TLS certificate" in result.stderr


def test_invalid_environment_value_is_a_clear_error() -> None:
    result = subprocess.run(
        [runfile(RECOMMENDATIONS), "--insecure"], env={**os.environ, "RECOMMENDATIONS_PORT": "fifty"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "argument --port: invalid int value: 'fifty'" in result.stderr
