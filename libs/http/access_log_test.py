"""The web access log: a JSON line per request, answered, refused or failed, joined to the gRPC access
lines by the request id; no value a client sends can split or forge a line."""

from __future__ import annotations

import json
import logging
import re

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from libs.http.access_log import AccessLog
from libs.http.app import web_app

LOGGER = "test-http-access"
FIELDS = {"timestamp", "service", "method", "path", "status", "duration_ms", "client", "request_id"}


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


async def broken(request: Request) -> Response:
    raise RuntimeError("a bug")


def logged(caplog, access_log: AccessLog) -> list[dict]:
    access_log.flush()
    batches = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    return [json.loads(line) for batch in batches for line in batch.split("\n")]


def test_one_line_per_request_with_its_status_duration_client_and_request_id(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    app = web_app([Route("/hello", hello), Route("/broken", broken)])
    access_log = AccessLog(app, "shop", logger=logging.getLogger(LOGGER), interval=60)
    with TestClient(access_log, raise_server_exceptions=False) as client:
        answers = [
            client.get("/hello?user=7", headers={"X-Request-ID": "req-1"}),
            client.post("/hello"),
            client.get("/nowhere"),
            client.get("/broken"),
        ]
    assert [answer.status_code for answer in answers] == [200, 405, 404, 500]
    lines = logged(caplog, access_log)
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("GET", "/hello", 200),  # the query is left out: it may carry a shopper's data
        ("POST", "/hello", 405),
        ("GET", "/nowhere", 404),
        ("GET", "/broken", 500),  # the app raised: counted as uvicorn answers it
    ]
    for line, answer in zip(lines, answers, strict=True):
        assert set(line) == FIELDS
        assert line["service"] == "shop"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["timestamp"])
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] >= 0
        assert line["client"] == "testclient:50000"
        if answer.status_code != 500:  # Starlette's answer to a crash carries none of the app's headers
            assert line["request_id"] == answer.headers["X-Request-ID"]
    assert lines[0]["request_id"] == "req-1"
    assert lines[3]["request_id"] is None


def test_no_value_can_split_or_forge_a_line() -> None:
    access_log = AccessLog(web_app([]), "shop", logger=logging.getLogger(LOGGER))
    hostile = '/a\n{"forged": 1}\r"\\\u2028:""'
    rows = [(1_764_470_000.5, "GET\n", hostile, 404, 0.0012, hostile, hostile)] * 2
    lines = access_log._lines(rows).split("\n")
    assert len(lines) == 2
    for line in map(json.loads, lines):
        assert line == {
            "timestamp": "2025-11-30T02:33:20.500+00:00", "service": "shop", "method": "GET\n", "path": hostile,
            "status": 404, "duration_ms": 1.2, "client": hostile, "request_id": hostile,
        }  # fmt: skip
