"""JSON Schema compatibility: a reader is compatible when it accepts every document the writer does.

Each pair names one of Confluent's JSON Schema change kinds (its ``SchemaDiff``
types) and the verdict Confluent gives it for a reader reading the writer's data.
"""

from __future__ import annotations

from typing import Any

import pytest

from schema_registry.json_schemas import check

OBJ = {"type": "object", "properties": {"id": {"type": "integer"}}}
CLOSED = {**OBJ, "additionalProperties": False}

PAIRS: list[tuple[str, Any, Any, bool]] = [
    # (change, writer, reader, compatible)
    ("identical", OBJ, OBJ, True),
    ("description-changed", OBJ, {**OBJ, "description": "x"}, True),
    ("type-extended", {"type": "integer"}, {"type": ["integer", "string"]}, True),
    ("type-integer-to-number", {"type": "integer"}, {"type": "number"}, True),
    ("type-narrowed", {"type": ["integer", "string"]}, {"type": "integer"}, False),
    ("type-changed", {"type": "string"}, {"type": "integer"}, False),
    (
        "max-length-increased",
        {"type": "string", "maxLength": 5},
        {"type": "string", "maxLength": 9},
        True,
    ),
    (
        "max-length-decreased",
        {"type": "string", "maxLength": 9},
        {"type": "string", "maxLength": 5},
        False,
    ),
    ("min-length-added", {"type": "string"}, {"type": "string", "minLength": 1}, False),
    ("maximum-removed", {"type": "number", "maximum": 3}, {"type": "number"}, True),
    (
        "minimum-increased",
        {"type": "number", "minimum": 0},
        {"type": "number", "minimum": 1},
        False,
    ),
    (
        "multiple-of-reduced",
        {"type": "number", "multipleOf": 4},
        {"type": "number", "multipleOf": 2},
        True,
    ),
    (
        "multiple-of-changed",
        {"type": "number", "multipleOf": 4},
        {"type": "number", "multipleOf": 3},
        False,
    ),
    ("pattern-removed", {"type": "string", "pattern": "^a"}, {"type": "string"}, True),
    ("pattern-added", {"type": "string"}, {"type": "string", "pattern": "^a"}, False),
    ("enum-extended", {"enum": ["A"]}, {"enum": ["A", "B"]}, True),
    ("enum-narrowed", {"enum": ["A", "B"]}, {"enum": ["A"]}, False),
    (
        "property-added-to-closed-model",
        CLOSED,
        {**CLOSED, "properties": {"id": {"type": "integer"}, "n": {"type": "string"}}},
        True,
    ),
    (
        "property-added-to-open-model",
        OBJ,
        {**OBJ, "properties": {"id": {"type": "integer"}, "n": {"type": "string"}}},
        False,
    ),
    ("property-removed-from-open-model", OBJ, {"type": "object", "properties": {}}, True),
    (
        "property-removed-from-closed-model",
        CLOSED,
        {"type": "object", "properties": {}, "additionalProperties": False},
        False,
    ),
    ("additional-properties-narrowed", OBJ, CLOSED, False),
    ("additional-properties-extended", CLOSED, OBJ, True),
    ("required-attribute-added", OBJ, {**OBJ, "required": ["id"]}, False),
    (
        "required-attribute-with-default-added",
        OBJ,
        {
            "type": "object",
            "properties": {"id": {"type": "integer", "default": 0}},
            "required": ["id"],
        },
        True,
    ),
    ("required-attribute-removed", {**OBJ, "required": ["id"]}, OBJ, True),
    (
        "items-changed",
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "string"}},
        False,
    ),
    (
        "items-widened",
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "number"}},
        True,
    ),
    ("max-items-added", {"type": "array"}, {"type": "array", "maxItems": 3}, False),
    ("unique-items-removed", {"type": "array", "uniqueItems": True}, {"type": "array"}, True),
    (
        "sum-type-extended",
        {"oneOf": [{"type": "integer"}]},
        {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        True,
    ),
    (
        "sum-type-narrowed",
        {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        {"oneOf": [{"type": "integer"}]},
        False,
    ),
    ("schema-removed", {"type": "string"}, {}, True),
    (
        "local-ref-followed",
        {
            "definitions": {"n": {"type": "integer"}},
            "type": "object",
            "properties": {"a": {"$ref": "#/definitions/n"}},
        },
        {
            "definitions": {"n": {"type": "string"}},
            "type": "object",
            "properties": {"a": {"$ref": "#/definitions/n"}},
        },
        False,
    ),
]


@pytest.mark.parametrize(
    ("writer", "reader", "compatible"),
    [pytest.param(w, r, c, id=name) for name, w, r, c in PAIRS],
)
def test_json_schema_compatibility_verdict(writer: Any, reader: Any, compatible: bool) -> None:
    messages = check(reader=reader, writer=writer)
    assert (not messages) == compatible, messages


def test_a_reference_to_another_schema_is_compared_by_its_content() -> None:
    writer = {"type": "object", "properties": {"a": {"$ref": "addr.json"}}}
    docs = {"addr.json": {"type": "object", "properties": {"city": {"type": "string"}}}}
    assert check(reader=writer, writer=writer, referenced=docs) == []
    reader = {"type": "object", "properties": {"a": {"type": "object", "required": ["zip"]}}}
    assert check(reader=reader, writer=writer, referenced=docs)
