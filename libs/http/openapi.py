"""OpenAPI 3.1 of the JSON API that transcoding serves, from the same descriptors as its routes.

`document(routes, comments, title)` describes every route `transcoding.routes_of` makes: its path (a
variable over several segments as one parameter with a pattern), its query parameters (every field the
path and body leave, nested ones as `filter.genre`), its body, its answer, and the google.rpc.Status of
every error. Schemas follow protobuf's JSON mapping, as json_format reads and writes it: lowerCamelCase
names, 64-bit integers as strings (numbers accepted too), enums by name, the well-known types in their JSON
forms. Comments of the protos (`comments(descriptor_set)`, from a descriptor set with source info, as
Bazel builds //proto:api) become descriptions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from libs.http.transcoding import HttpRoute, Template
from libs.validation import rules

VERSION = "3.1.0"
_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
_UINT64 = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}
_WRAPPERS: dict[str, dict[str, Any]] = {
    "google.protobuf.DoubleValue": {"type": "number"},
    "google.protobuf.FloatValue": {"type": "number"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "int32", "minimum": 0},
    "google.protobuf.Int64Value": {"type": ["string", "integer"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "integer"], "format": "int64"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "contentEncoding": "base64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
    **_WRAPPERS,
}
STATUS = {
    "type": "object",
    "description": "google.rpc.Status: the gRPC code, a message, and details such as a google.rpc.BadRequest.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "The google.rpc.Code."},
        "message": {"type": "string"},
        "details": {"type": "array", "items": _WELL_KNOWN["google.protobuf.Any"]},
    },
    "required": ["code"],
}

# Paths of a FileDescriptorProto's parts in its SourceCodeInfo (descriptor.proto's field numbers).
_MESSAGE, _NESTED, _FIELD, _ENUM, _SERVICE, _METHOD = 4, 3, 2, 5, 6, 2


def comments(descriptor_set: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """The leading comment of every message, field (`pkg.Message.field`), enum, service and method, by
    full name: from the source info a descriptor set keeps (protoc's --include_source_info)."""
    found: dict[str, str] = {}
    for file in descriptor_set.file:
        text = {tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location}
        prefix = file.package + "." if file.package else ""

        for index, proto in enumerate(file.message_type):
            _message_comments(proto, (_MESSAGE, index), prefix + proto.name, text, found)
        for index, enum in enumerate(file.enum_type):
            found[prefix + enum.name] = text.get((_ENUM, index), "")
        for index, service in enumerate(file.service):
            found[prefix + service.name] = text.get((_SERVICE, index), "")
            for number, method in enumerate(service.method):
                found[f"{prefix}{service.name}.{method.name}"] = text.get((_SERVICE, index, _METHOD, number), "")
    return {name: comment for name, comment in found.items() if comment}


def _message_comments(
    proto: descriptor_pb2.DescriptorProto,
    path: tuple[int, ...],
    name: str,
    text: Mapping[tuple[int, ...], str],
    found: dict[str, str],
) -> None:
    """The comments of a message, its fields and its nested messages, into `found`."""
    found[name] = text.get(path, "")
    for index, field in enumerate(proto.field):
        found[f"{name}.{field.name}"] = text.get((*path, _FIELD, index), "")
    for index, nested in enumerate(proto.nested_type):
        _message_comments(nested, (*path, _NESTED, index), f"{name}.{nested.name}", text, found)


class _Schemas:
    """The component schemas a document refers to, made as they are first needed."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.components: dict[str, Any] = {"google.rpc.Status": STATUS}

    def described(self, schema: dict[str, Any], full_name: str) -> dict[str, Any]:
        comment = self.comments.get(full_name)
        return {**schema, "description": comment} if comment else schema

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of a field's JSON value (an array for a repeated one, an object for a map)."""
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            schema = {"type": "object", "additionalProperties": self.single(value)}
            if key.type != FieldDescriptor.TYPE_STRING:
                schema["propertyNames"] = {
                    "pattern": r"^-?[0-9]+$" if key.type != FieldDescriptor.TYPE_BOOL else "^(true|false)$"
                }
            return schema
        single = self.single(field)
        if not field.is_repeated:
            return single
        whole = {keyword: value for keyword, value in rules.json_schema(field).items() if keyword != "items"}
        return {"type": "array", "items": single, **whole}

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of a field (an item of a repeated one), with its rules (libs/validation)."""
        keywords = rules.json_schema(field)
        if field.is_repeated:
            keywords = keywords.get("items", {})
        if not keywords:
            return self._value(field)
        if field.enum_type is not None:  # the names the rules leave, inline
            names = [value.name for value in field.enum_type.values]
            allowed = [keywords["const"]] if "const" in keywords else keywords.get("enum", names)
            refused = keywords.get("not", {}).get("enum", [])
            return {"type": "string", "enum": [name for name in names if name in allowed and name not in refused]}
        schema = self._value(field)
        if field.type in _INT64 | _UINT64:  # a range is a number's: the string form (also read) is left out
            schema = {key: value for key, value in schema.items() if key != "pattern"} | {"type": "integer"}
        return schema | keywords

    def _value(self, field: FieldDescriptor) -> dict[str, Any]:
        kind = field.type
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        if kind in _INT32:
            return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
        if kind in _UINT32:
            return {"type": "integer", "format": "int32", "minimum": 0, "maximum": 2**32 - 1}
        if kind in _INT64 | _UINT64:
            # Written as a string; a number is read too.
            low, high = (0, 2**64 - 1) if kind in _UINT64 else (-(2**63), 2**63 - 1)
            return {
                "type": ["string", "integer"],
                "format": "int64",
                "pattern": r"^-?[0-9]+$",
                "minimum": low,
                "maximum": high,
            }
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": "number"}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}

    def enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        name = enum.full_name
        if name not in self.components:
            schema = {"type": "string", "enum": [value.name for value in enum.values]}
            self.components[name] = self.described(schema, name)
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, message: Descriptor, leave_out: Iterable[str] = ()) -> dict[str, Any]:
        name = message.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        left = set(leave_out)
        if left:  # a body without the fields the path binds: a schema of its own, inline
            return self._object(message, left)
        if name not in self.components:
            self.components[name] = {}  # a message that contains itself refers to this entry
            self.components[name] = self._object(message, left)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, message: Descriptor, leave_out: set[str]) -> dict[str, Any]:
        fields = [field for field in message.fields if field.name not in leave_out]
        properties = {
            field.json_name: self.described(self.field(field), f"{message.full_name}.{field.name}") for field in fields
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        required = [field.json_name for field in fields if rules.is_required(field)]
        if required:
            schema["required"] = required
        return self.described(schema, message.full_name)


def openapi_path(template: Template) -> tuple[str, list[tuple[str, str]]]:
    """The OpenAPI path of a template (`/v1/{parent=shelves/*}/books` → `/v1/{parent}/books`) and each
    variable's name and, where it spans more than `*`, the pattern its value must match."""
    variables = []

    def replace(match: re.Match[str]) -> str:
        name, _, inner = match.group(1).partition("=")
        pattern = ""
        if inner and inner != "*":
            pattern = (
                "^"
                + "/".join("[^/]+" if s == "*" else ".+" if s == "**" else re.escape(s) for s in inner.split("/"))
                + "$"
            )
        variables.append((name, pattern))
        return "{" + name + "}"

    return re.sub(r"\{([^}]*)\}", replace, template.text), variables


def _query_parameters(
    message: Descriptor, bound: set[str], schemas: _Schemas, prefix: str = "", set_by_caller: bool = True
) -> list[dict[str, Any]]:
    """A parameter for every field below `message` that a query string can set: scalars, enums, the
    well-known types with string forms, repeated ones as repeated parameters, messages by their fields.
    `set_by_caller`: whether the caller must set `message` (the request itself, or a required field)."""
    parameters = []
    for field in message.fields:
        path = prefix + field.name
        if path in bound:
            continue
        nested = field.message_type
        if nested is not None and nested.full_name not in _WELL_KNOWN:
            if not field.is_repeated and not nested.GetOptions().map_entry and nested.full_name != message.full_name:
                required = set_by_caller and rules.is_required(field)
                parameters += _query_parameters(nested, bound, schemas, path + ".", required)
            continue
        schema = schemas.field(field)
        if nested is not None and schema.get("type") in ("object", "array") and not field.is_repeated:
            continue  # Struct, ListValue, Any: no string form
        required = set_by_caller and rules.is_required(field)
        parameter: dict[str, Any] = {"name": path, "in": "query", "required": required, "schema": schema}
        comment = schemas.comments.get(f"{message.full_name}.{field.name}")
        if comment:
            parameter["description"] = comment
        if field.is_repeated:
            parameter["style"], parameter["explode"] = "form", True
        parameters.append(parameter)
    return parameters


def _operation(route: HttpRoute, operation_id: str, schemas: _Schemas) -> tuple[str, dict[str, Any]]:
    method = route.method.description
    request = method.input_type
    path, variables = openapi_path(route.template)
    bound = {name for name, _ in variables}
    parameters = []
    for name, pattern in variables:
        within = request
        for part in name.split("."):
            found = within.fields_by_name[part]
            within = found.message_type or within
        schema = schemas.single(found) if not pattern else {"type": "string", "pattern": pattern}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    operation: dict[str, Any] = {"operationId": operation_id, "tags": [method.containing_service.full_name]}
    comment = schemas.comments.get(f"{method.containing_service.full_name}.{method.name}", "")
    if comment:
        operation["summary"] = comment.splitlines()[0]
        operation["description"] = comment
    if route.body == "*":
        body = schemas.message(request, leave_out=[name for name in bound if "." not in name])
        in_body = [field for field in request.fields if field.name not in bound]
    elif route.body:
        body_field = request.fields_by_name[route.body]
        body = schemas.field(body_field)
        bound.add(route.body)
        in_body = [body_field]
    if route.body:
        required = any(rules.is_required(field) for field in in_body)
        operation["requestBody"] = {"required": required, "content": {"application/json": {"schema": body}}}
    if route.body != "*":  # the fields the path and a body field leave come from the query
        parameters += _query_parameters(request, bound, schemas)
    if parameters:
        operation["parameters"] = parameters
    output = method.output_type
    answer = (
        schemas.field(output.fields_by_name[route.response_body]) if route.response_body else schemas.message(output)
    )
    if route.method.streams_responses:
        line = {
            "type": "object",
            "properties": {"result": answer, "error": {"$ref": "#/components/schemas/google.rpc.Status"}},
        }
        content = {"application/x-ndjson": {"schema": line}}
        description = 'A stream of JSON lines: {"result": ...} per message, {"error": ...} if it breaks.'
    else:
        content, description = {"application/json": {"schema": answer}}, "The answer."
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}}
    operation["responses"] = {
        "200": {"description": description, "content": content},
        "default": {"description": "An error: a google.rpc.Status with the HTTP status of its code.", "content": error},
    }
    return path, operation


def document(
    routes: Sequence[HttpRoute], comments: Mapping[str, str], title: str, version: str = "v1"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`."""
    schemas = _Schemas(comments)
    paths: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for route in routes:
        method = route.method.description
        base = f"{method.containing_service.name}_{method.name}"
        seen[base] = seen.get(base, 0) + 1
        operation_id = base if seen[base] == 1 else f"{base}{seen[base]}"
        path, operation = _operation(route, operation_id, schemas)
        paths.setdefault(path, {})[route.verb.lower()] = operation
    return {
        "openapi": VERSION,
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.components.items()))},
    }
