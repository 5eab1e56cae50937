"""The field rules of an API, written once in its .proto, applied to requests and described as JSON Schema.

A field's range is an option of the field, in protoc-gen-validate's vocabulary (`validate/validate.proto`):

    int32 max_results = 3 [(validate.rules).int32 = {gte: 1, lte: 20}];

`violations(request)` names every field of a request that breaks its rules (`check(request)` raises them
as one google.rpc.BadRequest), and `json_schema(field)` gives the same rules as JSON Schema keywords (the gateway's
OpenAPI document): so the service, its HTTP callers and a fuzzer read one range.

protoc-gen-validate's own Python package is not used: it reports the first broken rule (or all of them
joined in one string) where a BadRequest names each field, and it compiles code from templates when it
first meets a message. This module applies the rules that have a JSON Schema form — numbers, enums,
strings, repeated fields, required messages — and refuses any other rule when it first reads the message
(`UnsupportedRule`), never ignoring one. A string `pattern` is searched with Python's `re` (PGV names RE2;
keep to their common syntax; `\\w` here is every script's letters, as in Python).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from validate import validate_pb2

from libs.interceptors.errors import BadRequest, FieldViolation

_NUMBERS = ["int32", "int64", "uint32", "uint64", "sint32", "sint64"]
_NUMBERS += ["fixed32", "fixed64", "sfixed32", "sfixed64", "float", "double"]
# A rule kind of validate.FieldRules (its oneof `type`) by the field type it applies to.
_KINDS = {
    getattr(FieldDescriptor, "TYPE_" + kind.upper()): kind for kind in [*_NUMBERS, "bool", "string", "bytes", "enum"]
}


_BOUNDS = [  # a numeric rule's bound: its name, the test a value must pass, its words, its JSON Schema keyword
    ("gt", operator.gt, "greater than", "exclusiveMinimum"),
    ("gte", operator.ge, "at least", "minimum"),
    ("lt", operator.lt, "less than", "exclusiveMaximum"),
    ("lte", operator.le, "at most", "maximum"),
]


class UnsupportedRule(ValueError):
    """A rule of a .proto that this module does not apply (it would otherwise be silently ignored)."""


@dataclass(frozen=True)
class _Rule:
    """One rule of a value: `broken(value)` describes how a value breaks it (None: it does not), and
    `schema` is the rule as JSON Schema keywords."""

    broken: Callable[[Any], str | None]
    schema: dict[str, Any]


@dataclass(frozen=True)
class _FieldRules:
    field: FieldDescriptor
    required: bool  # a message field that must be set
    values: tuple[_Rule, ...]  # of the value, or of each item of a repeated field
    items: tuple[_Rule, ...]  # of a repeated field as a whole
    max_items: _Rule | None = None  # of a repeated field, checked first


def violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every rule `message` breaks, a violation per field (fields of nested messages as `a.b`, items as
    `a[2]`), in field order."""
    found: list[FieldViolation] = []
    for rules in _rules_of(message.DESCRIPTOR):
        field = rules.field
        name = prefix + field.name
        value = getattr(message, field.name)
        if field.is_repeated:
            too_long = list(_broken(name, (rules.max_items,), value) if rules.max_items else ())
            if too_long:  # refused by its length, unread: the work stays bounded however long a list is sent
                found += too_long
                continue
            found += _broken(name, rules.items, value)
            for index, item in enumerate(value):
                found += _broken(f"{name}[{index}]", rules.values, item)
                if field.message_type is not None:
                    found += violations(item, f"{name}[{index}].")
        elif field.message_type is not None:
            if message.HasField(field.name):
                found += violations(value, name + ".")
            elif rules.required:
                found.append(FieldViolation(name, "is required"))
        else:
            found += _broken(name, rules.values, value)
    return found


def check(request: Message) -> None:
    """Raises BadRequest naming every field of `request` that breaks its rules (a handler's first line)."""
    found = violations(request)
    if found:
        raise BadRequest(found)


def json_schema(field: FieldDescriptor) -> dict[str, Any]:
    """The rules of `field` as JSON Schema keywords, to add to the schema of its JSON value (for a repeated
    field: the array's keywords, and the items' under `items`)."""
    rules = _rules_of_field(field)
    if rules is None:
        return {}
    values = _merged(rules.values)
    if not field.is_repeated:
        return values
    whole = _merged(rules.items + ((rules.max_items,) if rules.max_items else ()))
    return {**whole, **({"items": values} if values else {})}


def is_required(field: FieldDescriptor) -> bool:
    """Whether a request must set `field`: a message field with `required`, or a field whose default
    value (0, "", no items: what proto3 JSON reads when the field is left out) breaks its rules."""
    rules = _rules_of_field(field)
    if rules is None:
        return False
    if field.message_type is not None and not field.is_repeated:
        return rules.required
    if field.is_repeated:
        return any(rule.broken([]) for rule in rules.items)
    return any(rule.broken(field.default_value) for rule in rules.values)


def _rules_of_field(field: FieldDescriptor) -> _FieldRules | None:
    return next((each for each in _rules_of(field.containing_type) if each.field is field), None)


def check_supported(message: Descriptor, seen: set[str] | None = None) -> None:
    """Raises UnsupportedRule if `message`, or a message below it, has a rule this module does not apply
    (else that is found when a request first carries it)."""
    seen = set() if seen is None else seen
    seen.add(message.full_name)
    for rules in _rules_of(message):
        nested = rules.field.message_type
        if nested is not None and nested.full_name not in seen:
            check_supported(nested, seen)


def _broken(name: str, rules: tuple[_Rule, ...], value: Any) -> Iterator[FieldViolation]:
    for rule in rules:
        description = rule.broken(value)
        if description is not None:
            yield FieldViolation(name, description)


def _merged(rules: tuple[_Rule, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    for rule in rules:
        schema.update(rule.schema)
    return schema


@functools.cache
def _rules_of(message: Descriptor) -> tuple[_FieldRules, ...]:
    """The rules of `message`'s fields (every message field too, whose own fields may have rules); those
    of messages below it are read when first needed (a message may contain itself)."""
    options = message.GetOptions()
    if options.Extensions[validate_pb2.disabled]:
        return ()
    for oneof in message.oneofs:
        if oneof.GetOptions().Extensions[validate_pb2.required]:
            raise UnsupportedRule(f"{oneof.full_name}: (validate.required) on a oneof")
    found = []
    for field in message.fields:
        rules = field.GetOptions().Extensions[validate_pb2.rules]
        nested = field.message_type
        is_map = nested is not None and nested.GetOptions().map_entry
        if is_map and rules.ListFields():
            raise UnsupportedRule(f"{field.full_name}: rules on a map field")
        if not rules.ListFields():
            if nested is not None and not is_map:
                found.append(_FieldRules(field, False, (), ()))
            continue
        found.append(_compiled(field, rules))
    return tuple(found)


def _compiled(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> _FieldRules:
    required = rules.message.required
    if rules.message.skip:
        raise UnsupportedRule(f"{field.full_name}: (validate.rules).message.skip")
    kind = rules.WhichOneof("type")
    if field.is_repeated:
        if kind != "repeated":
            raise UnsupportedRule(f"{field.full_name}: a repeated field's rules go under `repeated`")
        whole, max_items = _repeated(field, rules.repeated)
        return _FieldRules(field, False, _value_rules(field, rules.repeated.items), whole, max_items)
    return _FieldRules(field, required, _value_rules(field, rules), ())


def _value_rules(field: FieldDescriptor, rules: validate_pb2.FieldRules) -> tuple[_Rule, ...]:
    kind = rules.WhichOneof("type")
    if kind is None:
        if rules.HasField("message") and field.is_repeated:
            raise UnsupportedRule(f"{field.full_name}: message rules on repeated items")
        return ()
    if kind != _KINDS.get(field.type):
        raise UnsupportedRule(f"{field.full_name}: (validate.rules).{kind} on a field of another type")
    if kind in _NUMBERS:
        return _numbers(field, kind, getattr(rules, kind))
    if kind == "enum":
        assert field.enum_type is not None  # the kind is the field's type
        return _enum(field, rules.enum, field.enum_type)
    if kind == "string":
        return _string(field, rules.string)
    raise UnsupportedRule(f"{field.full_name}: (validate.rules).{kind}")


def _refuse_others(field: FieldDescriptor, rules: Message, kind: str, known: set[str]) -> None:
    for descriptor, _ in rules.ListFields():
        if descriptor.name not in known:
            raise UnsupportedRule(f"{field.full_name}: (validate.rules).{kind}.{descriptor.name}")


def _numbers(field: FieldDescriptor, kind: str, rules: Any) -> tuple[_Rule, ...]:
    _refuse_others(field, rules, kind, {"const", "lt", "lte", "gt", "gte", "in", "not_in"})
    lower = rules.gt if rules.HasField("gt") else rules.gte if rules.HasField("gte") else None
    upper = rules.lt if rules.HasField("lt") else rules.lte if rules.HasField("lte") else None
    if lower is not None and upper is not None and upper < lower:
        raise UnsupportedRule(f"{field.full_name}: an excluded range (lt/lte below gt/gte)")
    found = []
    if rules.HasField("const"):
        const = rules.const
        found.append(_Rule(lambda v: None if v == const else f"must be {const}, got {v}", {"const": const}))
    bounds = [
        (test, words, keyword, getattr(rules, name)) for name, test, words, keyword in _BOUNDS if rules.HasField(name)
    ]
    if bounds:
        if [name for name, *_ in _BOUNDS if rules.HasField(name)] == ["gte", "lte"]:
            expected = f"between {rules.gte} and {rules.lte}"
        else:
            expected = " and ".join(f"{words} {limit}" for _, words, _, limit in bounds)

        def out_of_range(value: Any) -> str | None:
            if all(test(value, limit) for test, _, _, limit in bounds):
                return None
            return f"must be {expected}, got {value}"

        found.append(_Rule(out_of_range, {keyword: limit for _, _, keyword, limit in bounds}))
    if getattr(rules, "in"):
        allowed = list(getattr(rules, "in"))
        found.append(_Rule(lambda v: None if v in allowed else f"must be one of {allowed}, got {v}", {"enum": allowed}))
    if rules.not_in:
        refused = list(rules.not_in)
        found.append(_Rule(lambda v: None if v not in refused else f"must not be {v}", {"not": {"enum": refused}}))
    return tuple(found)


def _enum(field: FieldDescriptor, rules: validate_pb2.EnumRules, enum: EnumDescriptor) -> tuple[_Rule, ...]:
    def name(number: int) -> str:
        value = enum.values_by_number.get(number)
        return value.name if value is not None else str(number)

    found = []
    if rules.HasField("const"):
        const = rules.const
        found.append(_Rule(lambda v: None if v == const else f"must be {name(const)}", {"const": name(const)}))
    if rules.defined_only:
        found.append(
            _Rule(lambda v: None if v in enum.values_by_number else f"{v} is not a known {enum.name}", {})
        )  # the JSON schema of an enum lists its defined names already
    if getattr(rules, "in"):
        allowed = list(getattr(rules, "in"))
        names = [name(number) for number in allowed]
        found.append(
            _Rule(lambda v: None if v in allowed else f"must be one of {names}, got {name(v)}", {"enum": names})
        )
    if rules.not_in:
        refused = list(rules.not_in)

        def not_in(v: int) -> str | None:
            if v not in refused:
                return None
            return "is required" if v == 0 else f"must not be {name(v)}"  # PGV's idiom: not_in: [0]

        found.append(_Rule(not_in, {"not": {"enum": [name(number) for number in refused]}}))
    return tuple(found)


def _string(field: FieldDescriptor, rules: validate_pb2.StringRules) -> tuple[_Rule, ...]:
    known = {"const", "len", "min_len", "max_len", "pattern", "prefix", "suffix", "contains", "in", "not_in"}
    _refuse_others(field, rules, "string", known)
    found = []
    if rules.HasField("const"):
        const = rules.const
        found.append(_Rule(lambda v: None if v == const else f"must be {const!r}", {"const": const}))
    if rules.HasField("len"):
        length = rules.len
        found.append(
            _Rule(
                lambda v: None if len(v) == length else f"must be {length} characters, got {len(v)}",
                {"minLength": length, "maxLength": length},
            )
        )
    if rules.HasField("min_len"):
        shortest = rules.min_len
        broken = "is required" if shortest == 1 else f"must be at least {shortest} characters"
        found.append(
            _Rule(
                lambda v: None if len(v) >= shortest else broken if not v else f"{broken}, got {len(v)}",
                {"minLength": shortest},
            )
        )
    if rules.HasField("max_len"):
        longest = rules.max_len
        found.append(
            _Rule(
                lambda v: None if len(v) <= longest else f"must be at most {longest} characters, got {len(v)}",
                {"maxLength": longest},
            )
        )
    patterns = []
    if rules.HasField("pattern"):
        patterns.append((rules.pattern, f"must match {rules.pattern}"))
    if rules.HasField("prefix"):
        patterns.append(("^" + re.escape(rules.prefix), f"must start with {rules.prefix!r}"))
    if rules.HasField("suffix"):
        patterns.append((re.escape(rules.suffix) + "$", f"must end with {rules.suffix!r}"))
    if rules.HasField("contains"):
        patterns.append((re.escape(rules.contains), f"must contain {rules.contains!r}"))
    if len(patterns) > 1:  # JSON Schema has one `pattern` per schema
        raise UnsupportedRule(f"{field.full_name}: more than one of pattern, prefix, suffix, contains")
    if patterns:
        ((text, description),) = patterns
        compiled = re.compile(text)
        found.append(_Rule(lambda v: None if compiled.search(v) else description, {"pattern": text}))
    if getattr(rules, "in"):
        allowed = list(getattr(rules, "in"))
        found.append(_Rule(lambda v: None if v in allowed else f"must be one of {allowed}", {"enum": allowed}))
    if rules.not_in:
        refused = list(rules.not_in)
        found.append(_Rule(lambda v: None if v not in refused else f"must not be {v!r}", {"not": {"enum": refused}}))
    return tuple(found)


def _repeated(field: FieldDescriptor, rules: validate_pb2.RepeatedRules) -> tuple[tuple[_Rule, ...], _Rule | None]:
    """The rules of a repeated field as a whole, and its max_items apart."""
    _refuse_others(field, rules, "repeated", {"min_items", "max_items", "unique", "items"})
    found = []
    if rules.HasField("min_items"):
        fewest = rules.min_items
        broken = "must have at least one item" if fewest == 1 else f"must have at least {fewest} items"
        found.append(_Rule(lambda v: None if len(v) >= fewest else f"{broken}, got {len(v)}", {"minItems": fewest}))
    if rules.unique:
        if field.message_type is not None:
            raise UnsupportedRule(f"{field.full_name}: `unique` on a repeated message field")
        found.append(
            _Rule(lambda v: None if len(set(v)) == len(v) else "must not repeat an item", {"uniqueItems": True})
        )
    max_items = None
    if rules.HasField("max_items"):
        most = rules.max_items
        max_items = _Rule(
            lambda v: None if len(v) <= most else f"must have at most {most} items, got {len(v)}", {"maxItems": most}
        )
    return tuple(found), max_items
