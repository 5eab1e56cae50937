"""schemathesis against the running gateway and the real services behind it, from the gateway's own
OpenAPI document: every operation, with inputs that fit the schema and inputs that do not; no answer may be
a server error (5xx), every answer must be one the document describes (status, content type, schema), and
inputs that fit the schema (its ranges are the protos' field rules) must be answered, not refused.

Everything is started as `./bazelw run //:dev` starts it (tools/dev: every service of the list, mTLS
between them), on free loopback ports. Bounded: at most MAX_EXAMPLES inputs per operation and mode.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from libs.processes.processes import ChildProcess, free_ports, runfile
from services.gateway.main import SERVICE
from services.registry import REGISTRY

MAX_EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Inputs that fit the schema, whose ranges come from the protos' field rules (libs/validation), must reach
# the service and be answered. Schema-invalid inputs are not required to be refused: proto3's JSON mapping
# rightly reads more than the schema shows (numbers as strings, enums by number, proto field names).
CHECKS_OF = {
    GenerationMode.POSITIVE: [*CHECKS, positive_data_acceptance],
    GenerationMode.NEGATIVE: CHECKS,
}


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    """The gateway's address, every service started as //:dev starts them and its callees SERVING."""
    ports = dict(zip(REGISTRY, free_ports(len(REGISTRY)), strict=True))
    dev = ChildProcess("dev", [runfile("tools/dev/dev"), *(f"--port={name}={port}" for name, port in ports.items())])
    dev.start()
    try:
        url = f"http://127.0.0.1:{ports[SERVICE.name]}"
        dev.wait_for_port(ports[SERVICE.name])
        wanted = {"status": "ready", **{name: "SERVING" for name in REGISTRY.calls(SERVICE.name)}}
        deadline = time.monotonic() + 30
        while json.load(urllib.request.urlopen(f"{url}/readyz", timeout=10)) != wanted:
            assert time.monotonic() < deadline, "the gateway's callees are not SERVING after 30 s"
            time.sleep(0.2)
        yield url
    finally:
        dev.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_every_answer_as_documented(gateway_url: str, mode: GenerationMode) -> None:
    # schemathesis' Python API rather than its pytest plugin, whose lazy schemas do not run on pytest 9.
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    schema.config.base_url = gateway_url
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail(f"schemathesis cannot read an operation of the document: {result.err()}")
        operations.append(result.ok())
    assert operations, "the gateway's document has no operation"
    answered: collections.Counter[tuple[str, int]] = collections.Counter()
    for operation in operations:

        @hypothesis.given(operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,  # the same inputs every run: a failure reproduces
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def call(case: Any) -> None:
            response = case.call_and_validate(checks=CHECKS_OF[mode], timeout=10)
            answered[(case.operation.label, response.status_code)] += 1

        call()
    print(f"{mode.value} inputs, answers by operation and status: {dict(sorted(answered.items()))}")
    for operation in operations:
        calls = sum(n for (label, _), n in answered.items() if label == operation.label)
        assert calls >= MAX_EXAMPLES // 4, f"{operation.label}: only {calls} inputs were sent"
        if mode == GenerationMode.POSITIVE:  # answered by the service, not refused on the way
            assert answered[(operation.label, 200)] >= 0.9 * calls, f"{operation.label}: {calls} valid inputs"
