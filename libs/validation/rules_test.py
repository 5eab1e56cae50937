"""libs/validation: every rule of a request named as a field violation, the same rules as JSON Schema, and
rules it does not apply refused rather than ignored."""

from __future__ import annotations

from typing import Any, cast

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from libs.interceptors.errors import BadRequest, FieldViolation
from libs.validation import rules
from libs.validation.testdata import orders_pb2


def valid_order() -> orders_pb2.Order:
    return orders_pb2.Order(
        customer_id=1,
        quantity=20,
        discount=0.5,
        shipping=orders_pb2.SHIPPING_POST,
        fallbacks=[orders_pb2.SHIPPING_COURIER],
        tags=["#gift"],
        address=orders_pb2.Address(city="Lyon", postcode="69001"),
        code=7,
    )


def named(order: Message) -> dict[str, str]:
    return {violation.field: violation.description for violation in rules.violations(order)}


def test_a_valid_request_breaks_no_rule() -> None:
    assert rules.violations(valid_order()) == []


def test_every_broken_rule_is_named_with_its_field() -> None:
    order = valid_order()
    order.customer_id = 0
    order.quantity = 21
    order.discount = 1.0
    order.shipping = orders_pb2.SHIPPING_UNSPECIFIED
    order.fallbacks[:] = [orders_pb2.SHIPPING_POST, orders_pb2.SHIPPING_POST]
    order.fallbacks.append(cast(orders_pb2.Shipping.ValueType, 7))  # an unknown number
    order.tags[:] = ["gift", "#much-too-long"]
    order.address.city = ""
    order.address.postcode = "6900"
    order.more.add(city="x" * 41, postcode="12345")
    order.code = 8
    assert named(order) == {
        "customer_id": "must be greater than 0, got 0",
        "quantity": "must be between 1 and 20, got 21",
        "discount": "must be at least 0.0 and less than 1.0, got 1.0",
        "shipping": "is required",
        "fallbacks": "must have at most 2 items, got 3",
        "tags[0]": "must start with '#'",
        "tags[1]": "must be at most 8 characters, got 14",
        "address.city": "is required",
        "address.postcode": "must match ^[0-9]{5}$",
        "more[0].city": "must be at most 40 characters, got 41",
        "code": "must be one of [7, 9], got 8",
    }
    # Over max_items, nothing else of the list is looked at (not even fallbacks[2]): bounded work.
    assert [v for v in rules.violations(order) if v.field.startswith("fallbacks")] == [
        FieldViolation("fallbacks", "must have at most 2 items, got 3")
    ]
    order.fallbacks.pop()
    assert named(order)["fallbacks"] == "must not repeat an item"
    order.fallbacks[1] = cast(orders_pb2.Shipping.ValueType, 7)
    assert named(order)["fallbacks[1]"] == "7 is not a known Shipping"


def test_a_required_message_and_counts_of_items() -> None:
    order = valid_order()
    order.ClearField("address")
    order.ClearField("tags")
    assert named(order) == {"address": "is required", "tags": "must have at least one item, got 0"}


def schema_of(message: Any) -> dict[str, Any]:
    """The JSON Schema of a message's JSON form as far as the rules go (types left to JSON itself)."""
    properties: dict[str, Any] = {}
    required = []
    for field in message.DESCRIPTOR.fields:
        keywords = rules.json_schema(field)
        if field.message_type is not None and not field.is_repeated:
            keywords = {**keywords, **schema_of(field.message_type._concrete_class)}
        elif field.message_type is not None:
            keywords = {**keywords, "items": schema_of(field.message_type._concrete_class)}
        if field.enum_type is not None:
            names = {"enum": [value.name for value in field.enum_type.values]}
            if field.is_repeated:
                keywords["items"] = {**names, **keywords.get("items", {})}
            else:
                keywords = {**names, **keywords}
        properties[field.json_name] = keywords
        if rules.is_required(field):
            required.append(field.json_name)
    return {"type": "object", "properties": properties, "required": required}


def test_the_json_schema_accepts_and_refuses_what_the_rules_do() -> None:
    schema = schema_of(orders_pb2.Order)
    jsonschema.validate(json_format.MessageToDict(valid_order()), schema)
    assert rules.json_schema(orders_pb2.Order.DESCRIPTOR.fields_by_name["quantity"]) == {"minimum": 1, "maximum": 20}
    assert rules.json_schema(orders_pb2.Order.DESCRIPTOR.fields_by_name["fallbacks"]) == {
        "uniqueItems": True,
        "maxItems": 2,
        "items": {"not": {"enum": ["SHIPPING_UNSPECIFIED"]}},
    }
    assert rules.json_schema(orders_pb2.Order.DESCRIPTOR.fields_by_name["note"]) == {}
    broken = {
        "customerId": 0,
        "quantity": 21,
        "discount": 1.0,
        "shipping": "SHIPPING_UNSPECIFIED",
        "fallbacks": ["SHIPPING_POST", "SHIPPING_POST", "SHIPPING_COURIER"],
        "tags": ["gift"],
        "code": 8,
    }
    for name, value in broken.items():
        document = {**json_format.MessageToDict(valid_order()), name: value}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(document, schema)
        assert name in {
            orders_pb2.Order.DESCRIPTOR.fields_by_name[v.field.split("[")[0].split(".")[0]].json_name
            for v in rules.violations(json_format.ParseDict(document, orders_pb2.Order()))
        }
    without_address = json_format.MessageToDict(valid_order())
    del without_address["address"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(without_address, schema)


@pytest.mark.parametrize(
    ("message", "named"),
    [
        (orders_pb2.WithEmail, "string.email"),
        (orders_pb2.WithMapRules, "map field"),
        (orders_pb2.WithMismatchedKind, "int32 on a field of another type"),
        (orders_pb2.Nesting, "string.email"),  # found through the message field, before any request carries it
    ],
)
def test_a_rule_it_does_not_apply_is_refused_not_ignored(message: Any, named: str) -> None:
    with pytest.raises(rules.UnsupportedRule, match=named):
        rules.check_supported(message.DESCRIPTOR)


def test_a_field_whose_default_breaks_its_rules_is_required() -> None:
    fields = orders_pb2.Order.DESCRIPTOR.fields_by_name
    required = {name for name, field in fields.items() if rules.is_required(field)}
    # customer_id > 0, quantity >= 1, shipping not 0, tags: min 1 item, address: required; discount
    # (0 is allowed), fallbacks (none is allowed), note, more: not required. code: 0 is not in [7, 9].
    assert required == {"customer_id", "quantity", "shipping", "tags", "address", "code"}


def test_a_message_that_contains_itself() -> None:
    rules.check_supported(orders_pb2.Tree.DESCRIPTOR)
    tree = orders_pb2.Tree(size=1, child=orders_pb2.Tree(size=1, child=orders_pb2.Tree(size=0)))
    assert named(tree) == {"child.child.size": "must be at least 1, got 0"}


def test_check_raises_one_bad_request_naming_every_field() -> None:
    rules.check(valid_order())
    order = valid_order()
    order.quantity, order.customer_id = 0, 0
    with pytest.raises(BadRequest) as raised:
        rules.check(order)
    assert [v.field for v in raised.value.violations] == ["customer_id", "quantity"]
