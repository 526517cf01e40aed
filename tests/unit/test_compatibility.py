"""Compatibility checks on reader/writer pairs and per level, as Avro's resolution rules decide."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schema_registry.compatibility import CompatibilityLevel, check, check_level
from schema_registry.schemas import InvalidSchemaError


def record(*fields: dict[str, Any], name: str = "Row", **extra: Any) -> str:
    return json.dumps({"type": "record", "name": name, "fields": list(fields), **extra})


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(*symbols: str, **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "Colour", "symbols": list(symbols), **extra}


def test_an_int_written_field_can_be_read_as_long_but_not_the_reverse() -> None:
    as_int = record(field("n", "int"))
    as_long = record(field("n", "long"))
    assert check(reader=as_long, writer=as_int).compatible
    result = check(reader=as_int, writer=as_long)
    assert not result.compatible
    assert any("TYPE_MISMATCH" in m and "/fields/0/type" in m for m in result.messages)


def test_a_reader_may_add_a_field_only_when_it_has_a_default() -> None:
    old = record(field("id", "long"))
    with_default = record(field("id", "long"), field("email", "string", default=""))
    without_default = record(field("id", "long"), field("email", "string"))
    assert check(reader=with_default, writer=old).compatible
    result = check(reader=without_default, writer=old)
    assert not result.compatible
    assert any("READER_FIELD_MISSING_DEFAULT_VALUE" in m and "email" in m for m in result.messages)


def test_a_reader_may_drop_a_field_the_writer_still_writes() -> None:
    old = record(field("id", "long"), field("email", "string"))
    assert check(reader=record(field("id", "long")), writer=old).compatible


def test_an_added_enum_symbol_breaks_old_readers_unless_they_have_an_enum_default() -> None:
    small = record(field("c", enum("RED", "GREEN")))
    large = record(field("c", enum("RED", "GREEN", "BLUE")))
    small_with_default = record(field("c", enum("RED", "GREEN", default="RED")))
    assert check(reader=large, writer=small).compatible
    result = check(reader=small, writer=large)
    assert not result.compatible
    assert any("MISSING_ENUM_SYMBOLS" in m and "BLUE" in m for m in result.messages)
    assert check(reader=small_with_default, writer=large).compatible


def test_a_widened_union_reads_the_narrow_one_but_not_the_reverse() -> None:
    narrow = record(field("v", ["null", "string"], default=None))
    wide = record(field("v", ["null", "string", "long"], default=None))
    assert check(reader=wide, writer=narrow).compatible
    result = check(reader=narrow, writer=wide)
    assert not result.compatible
    assert result.messages


def test_a_field_alias_lets_a_reader_rename_a_field() -> None:
    writer = record(field("mail", "string"))
    renamed = record(field("email", "string"))
    aliased = record(field("email", "string", aliases=["mail"]))
    assert not check(reader=renamed, writer=writer).compatible
    assert check(reader=aliased, writer=writer).compatible


def test_a_changed_fixed_size_is_incompatible_both_ways() -> None:
    four = record(field("h", {"type": "fixed", "name": "Hash", "size": 4}))
    eight = record(field("h", {"type": "fixed", "name": "Hash", "size": 8}))
    for reader, writer in ((four, eight), (eight, four)):
        result = check(reader=reader, writer=writer)
        assert not result.compatible
        assert any("FIXED_SIZE_MISMATCH" in m for m in result.messages)


def test_renaming_a_record_is_incompatible_unless_the_reader_aliases_the_old_name() -> None:
    writer = record(field("id", "long"), name="Customer")
    renamed = record(field("id", "long"), name="Client")
    aliased = record(field("id", "long"), name="Client", aliases=["Customer"])
    result = check(reader=renamed, writer=writer)
    assert not result.compatible
    assert any("NAME_MISMATCH" in m for m in result.messages)
    assert check(reader=aliased, writer=writer).compatible


def test_a_compatible_result_carries_no_messages() -> None:
    schema = record(field("id", "long"))
    result = check(reader=schema, writer=schema)
    assert result.compatible
    assert result.messages == ()


def test_an_invalid_schema_text_is_reported_not_checked() -> None:
    with pytest.raises(InvalidSchemaError, match="reader"):
        check(reader='{"type": "nope"}', writer=record(field("id", "long")))


V1 = record(field("id", "long"))
V2 = record(field("id", "long"), field("name", "string", default=""))
V3_DROPS_ID = record(field("name", "string", default=""))


@pytest.mark.parametrize(
    ("level", "new", "existing", "expected"),
    [
        # BACKWARD: the new schema reads the old data.
        ("BACKWARD", V2, [V1], True),
        ("BACKWARD", record(field("id", "long"), field("x", "int")), [V1], False),
        # FORWARD: the old schema reads the new data; dropping a field without default breaks it.
        ("FORWARD", V3_DROPS_ID, [V2], False),
        ("FORWARD", V2, [V1], True),
        # FULL needs both directions.
        ("FULL", V2, [V1], True),
        ("FULL", record(field("id", "int")), [V1], False),
        # NONE accepts anything.
        ("NONE", record(field("other", "boolean")), [V1], True),
        # Non-transitive levels only look at the latest version...
        ("BACKWARD", V3_DROPS_ID, [record(field("id", "int")), V2], True),
        # ...transitive ones look at every version.
        (
            "BACKWARD_TRANSITIVE",
            record(field("id", "long")),
            [record(field("id", "string")), V1],
            False,
        ),
        ("FORWARD_TRANSITIVE", V2, [V1, V2], True),
        ("FULL_TRANSITIVE", V2, [record(field("id", "int")), V1], False),
        ("full", V2, [], True),
    ],
)
def test_levels_check_the_directions_and_versions_they_promise(
    level: str, new: str, existing: list[str], expected: bool
) -> None:
    result = check_level(level, new=new, existing=existing)
    assert result.compatible is expected
    assert bool(result.messages) is not expected


def test_transitive_failures_name_the_version_they_fail_against() -> None:
    oldest = record(field("id", "string"))
    result = check_level(CompatibilityLevel.BACKWARD_TRANSITIVE, new=V1, existing=[oldest, V1])
    assert not result.compatible
    assert len(result.messages) == 1
    assert "existing schema #1" in result.messages[0]


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="SIDEWAYS"):
        check_level("sideways", new=V1, existing=[V1])
