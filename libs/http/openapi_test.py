"""OpenAPI of transcoded routes (libs/http/openapi.py) for testdata/shelves.proto: accepted by
openapi-spec-validator, and what each route takes and answers is in it, comments included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, json_format
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs in the lock
from openapi_spec_validator import validate

from libs.http.openapi import comments, document, openapi_path
from libs.http.testdata import shelves_pb2
from libs.http.transcoding import parse_template, routes_of
from libs.processes.processes import runfile

SERVICE = "testdata.shelves.v1.ShelfService"
assert shelves_pb2  # its descriptors, for routes_of


def shelves_document() -> dict[str, Any]:
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(
        runfile("libs/http/shelves_proto-descriptor-set.proto.bin").read_bytes()
    )
    routes = routes_of("shelves", SERVICE)
    return document(routes, comments(descriptor_set), title="Shelves")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    """Made when a test runs (the descriptor set is a runfile): the module imports anywhere."""
    return shelves_document()


def test_the_validator_accepts_it(spec: dict[str, Any]) -> None:
    validate(spec)  # raises, naming the fault
    assert spec["openapi"] == "3.1.0"
    json.dumps(spec)  # plain JSON


def test_every_route_is_an_operation_and_nothing_else(spec: dict[str, Any]) -> None:
    operations = {(verb, path) for path, item in spec["paths"].items() for verb in item}
    assert operations == {
        ("get", "/v1/shelves/{shelf_id}"),
        ("get", "/v1/libraries/{library}/shelves/{shelf_id}"),
        ("get", "/v1/{parent}/books"),
        ("get", "/v1/{parent}/titles"),
        ("post", "/v1/{parent}/books"),
        ("post", "/v1/{name}:move"),
        ("get", "/v1/files/{path}"),
        ("get", "/v1/{parent}/books:follow"),
    }
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_path_variables_over_several_segments_carry_their_pattern() -> None:
    path, variables = openapi_path(parse_template("/v1/{name=shelves/*/books/*}:move"))
    assert path == "/v1/{name}:move"
    assert variables == [("name", "^shelves/[^/]+/books/[^/]+$")]


def test_query_parameters_are_the_fields_the_path_leaves_and_comments_describe(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/v1/{parent}/books"]["get"]
    names = [p["name"] for p in operation["parameters"]]
    assert names == [
        "parent", "page_size", "authors", "filter.genre", "filter.in_print", "min_rating", "published_after",
    ]  # fmt: skip
    authors = next(p for p in operation["parameters"] if p["name"] == "authors")
    assert authors["schema"] == {"type": "array", "items": {"type": "string"}}
    assert operation["summary"] == "The books of a shelf, filtered by query parameters."
    shelf = spec["components"]["schemas"]["testdata.shelves.v1.Shelf"]
    assert shelf["description"] == "A shelf of books."


def test_bodies_leave_out_what_the_path_binds(spec: dict[str, Any]) -> None:
    move = spec["paths"]["/v1/{name}:move"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(move["properties"]) == {"destination", "keepCopy"}
    create = spec["paths"]["/v1/{parent}/books"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/testdata.shelves.v1.Book"
    }
    assert [p["name"] for p in create["parameters"]] == ["parent", "requested_by"]


@pytest.mark.parametrize(
    ("message", "schema_name"),
    [
        (shelves_pb2.Book(name="n", title="t", genre=shelves_pb2.GENRE_FICTION, copies_sold=2**40), "Book"),
        (shelves_pb2.Shelf(shelf_id=-5, library="x"), "Shelf"),
    ],
)
def test_answers_written_by_json_format_match_their_schema(
    message: Any, schema_name: str, spec: dict[str, Any]
) -> None:
    schema = {"components": spec["components"], "$ref": f"#/components/schemas/testdata.shelves.v1.{schema_name}"}
    Draft202012Validator(schema).validate(json_format.MessageToDict(message))


def test_errors_are_google_rpc_status(spec: dict[str, Any]) -> None:
    for item in spec["paths"].values():
        for operation in item.values():
            error = operation["responses"]["default"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/google.rpc.Status"}
