"""Declarative mappings from the config: filters, keys, fields, constants, versions, models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from cdc.config import DeclarativeMapping
from cdc.core.errors import ConfigError, MappingError, RelationPending
from mappers.declarative import declarative_mapper
from mappers.entity import EntityDelete, EntityUpsert, Origin, TableEvent, Version, microseconds
from mappers.examples import Contact
from tests.unit.events import table_event

LSN = 0x16B374D848
T0 = "2026-03-01T10:00:00Z"
T1 = "2026-03-01T11:00:00Z"


@dataclass(frozen=True)
class NoLinks:
    """A MapContext that knows no related entity."""

    integration: str = "crm"

    def external_id(self, integration: str, entity: str, key: object) -> str:
        raise RelationPending(integration=integration, entity=entity, key=str(key))


def event(op: str, **fields: Any) -> TableEvent:
    """A customers event; defaults: this file's LSN, offset 0, a fixed commit time."""
    fields.setdefault("lsn", LSN)
    fields.setdefault("ts_us", 1_800_000_000_000_000)
    return table_event("customers", op, **fields)


def customer(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7,
        "name": "Ada Lovelace",
        "email": "ADA@Example.com",
        "phone": None,
        "region": "eu",
        "status": "active",
        "updated_at": T0,
    }
    row.update(changes)
    return row


def mapping(**overrides: Any) -> DeclarativeMapping:
    spec: dict[str, Any] = {
        "entity": "contact",
        "key": "id",
        "fields": {"full_name": "name", "email": "lower(email)", "phone": "phone"},
    }
    spec.update(overrides)
    return DeclarativeMapping(**spec)


def run(spec: DeclarativeMapping, change: TableEvent) -> list[Any]:
    return list(declarative_mapper(spec, integration="crm")(change, NoLinks()))


# --------------------------------------------------------------------------- fields and keys


def test_an_insert_becomes_an_upsert_of_the_mapped_fields() -> None:
    [op] = run(mapping(), event("c", after=customer()))
    assert isinstance(op, EntityUpsert)
    assert op.entity == "contact"
    assert op.key == "7"
    assert op.fields() == {"full_name": "Ada Lovelace", "email": "ada@example.com", "phone": None}
    assert op.unavailable == frozenset()
    assert op.origin == Origin("app.public.customers", 0, 0)


@pytest.mark.parametrize("op", ["u", "r"])
def test_updates_and_snapshot_reads_are_upserts_too(op: str) -> None:
    [result] = run(mapping(), event(op, before=customer(), after=customer(name="Ada")))
    assert isinstance(result, EntityUpsert)
    assert result.fields()["full_name"] == "Ada"


def test_constants_are_added_to_every_entity() -> None:
    spec = mapping(constants={"source": "postgres", "tier": 2, "vip": False})
    [op] = run(spec, event("c", after=customer()))
    assert op.fields()["source"] == "postgres"
    assert op.fields()["tier"] == 2
    assert op.fields()["vip"] is False


def test_a_key_template_joins_several_columns() -> None:
    [op] = run(mapping(key="{region}-{id}"), event("c", after=customer()))
    assert op.key == "eu-7"


def test_a_key_template_can_hold_literal_braces() -> None:
    [op] = run(mapping(key="{{c}}:{id}"), event("c", after=customer()))
    assert op.key == "{c}:7"


def test_a_null_key_column_is_a_mapping_error_naming_it() -> None:
    with pytest.raises(MappingError, match="key column 'region' is null"):
        run(mapping(key="{region}-{id}"), event("c", after=customer(region=None)))


def test_a_truncate_maps_to_nothing() -> None:
    truncate = TableEvent(
        origin=Origin("app.public.customers", 0, 9),
        op="t",
        schema="public",
        table="customers",
        key=None,
        before=None,
        after=None,
        unavailable=frozenset(),
        commit_lsn=LSN,
        seq=1,
        ts_us=0,
    )
    assert run(mapping(), truncate) == []


def test_a_derived_model_is_named_after_the_entity() -> None:
    [op] = run(mapping(), event("c", after=customer()))
    assert type(op.model).__name__ == "contact"


# --------------------------------------------------------------------------- where


def test_new_rows_that_do_not_match_the_filter_yield_nothing() -> None:
    spec = mapping(where="status == 'active' and email is not None")
    assert run(spec, event("c", after=customer(status="closed"))) == []
    closed = customer(status="closed")
    assert run(spec, event("u", before=closed, after=closed)) == []
    [op] = run(spec, event("u", after=customer()))
    assert op.key == "7"


def test_a_row_that_stops_matching_the_filter_is_deleted_from_the_target() -> None:
    """Issue 16.8: the target holds the mapping of the source, so a row that no longer
    matches ``where`` leaves it (an update without a before image, or a snapshot read)."""
    spec = mapping(where="status == 'active'")
    [op] = run(spec, event("u", after=customer(status="closed"), lsn=LSN + 8))
    assert op == EntityDelete(
        entity="contact",
        key="7",
        version=Version.from_lsn(LSN + 8, 1),
        origin=Origin("app.public.customers", 0, 0),
    )
    [read] = run(spec, event("r", after=customer(status="closed")))
    assert isinstance(read, EntityDelete)
    [changed] = run(spec, event("u", before=customer(), after=customer(status="closed")))
    assert isinstance(changed, EntityDelete)


def test_a_delete_of_a_row_that_did_not_match_yields_nothing_when_the_image_shows_it() -> None:
    spec = mapping(where="status == 'active'")
    assert run(spec, event("d", before=customer(status="closed"))) == []


def test_a_delete_of_a_matching_row_yields_a_delete() -> None:
    spec = mapping(where="status == 'active'")
    [op] = run(spec, event("d", before=customer()))
    assert isinstance(op, EntityDelete)
    assert op.key == "7"


def test_a_delete_with_only_the_key_is_never_filtered_out() -> None:
    # REPLICA IDENTITY DEFAULT: the before image holds the key, other columns are null
    spec = mapping(where="status == 'active'")
    key_only = {"id": 7, "name": None, "email": None, "status": None, "updated_at": None}
    [op] = run(spec, event("d", before=key_only))
    assert isinstance(op, EntityDelete)
    [op] = run(spec, event("d", key={"id": 7}))
    assert op == EntityDelete(
        entity="contact",
        key="7",
        version=Version.from_lsn(LSN, 1),
        origin=Origin("app.public.customers", 0, 0),
    )


def test_a_filter_reading_an_unchanged_toast_column_is_a_mapping_error() -> None:
    spec = mapping(where="len(email) > 3")
    change = event(
        "u", after=customer(email="__debezium_unavailable_value"), unavailable=frozenset({"email"})
    )
    with pytest.raises(MappingError, match=r"integrations\.crm\.mapper\.where.*'email'.*TOAST"):
        run(spec, change)


# --------------------------------------------------------------------------- unavailable values


def test_fields_fed_only_by_unchanged_toast_columns_are_left_out() -> None:
    change = event(
        "u",
        after=customer(email="__debezium_unavailable_value"),
        unavailable=frozenset({"email"}),
    )
    [op] = run(mapping(fields={"full_name": "name", "contact_email": "lower(email)"}), change)
    assert op.unavailable == frozenset({"contact_email"})
    assert op.fields() == {"full_name": "Ada Lovelace"}
    assert "__debezium_unavailable_value" not in repr(op.model)


def test_a_field_mixing_a_visible_and_an_unchanged_column_is_left_out_too() -> None:
    change = event(
        "u",
        after=customer(email="__debezium_unavailable_value"),
        unavailable=frozenset({"email"}),
    )
    spec = mapping(fields={"label": "concat(name, ' <', email, '>')", "full_name": "name"})
    [op] = run(spec, change)
    assert op.unavailable == frozenset({"label"})
    assert op.fields() == {"full_name": "Ada Lovelace"}


def test_a_user_model_with_required_fields_accepts_an_event_missing_some_of_them() -> None:
    spec = mapping(
        fields={"customer_id": "id", "name": "name", "email": "email", "phone": "phone"},
        model="mappers.examples:Contact",
    )
    change = event("u", after=customer(phone="x" * 5), unavailable=frozenset({"email", "phone"}))
    [op] = run(spec, change)
    assert isinstance(op.model, Contact)
    assert op.unavailable == frozenset({"email", "phone"})
    assert op.fields() == {"customer_id": 7, "name": "Ada Lovelace"}


# --------------------------------------------------------------------------- versions


def test_a_version_column_does_not_reorder_commits_a_later_commit_wins() -> None:
    spec = mapping(version_column="updated_at")
    [late_commit] = run(spec, event("u", after=customer(updated_at=T0), lsn=LSN + 100))
    [early_commit] = run(spec, event("u", after=customer(updated_at=T1), lsn=LSN))
    assert late_commit.version > early_commit.version
    assert late_commit.version == Version.from_lsn(LSN + 100, 1)


def test_without_a_version_column_versions_follow_commit_lsn_and_sequence() -> None:
    [a] = run(mapping(), event("c", after=customer(), lsn=LSN, seq=1))
    [b] = run(mapping(), event("u", after=customer(), lsn=LSN, seq=2))
    assert a.version == Version.from_lsn(LSN, 1)
    assert b.version > a.version


def test_a_reinsert_after_a_delete_in_one_transaction_wins_over_the_delete() -> None:
    spec = mapping(version_column="updated_at")
    commit_us = microseconds(datetime(2026, 3, 2, tzinfo=UTC), column="commit")
    [delete] = run(spec, event("d", key={"id": 7}, ts_us=commit_us, lsn=LSN, seq=1))
    [insert] = run(spec, event("c", after=customer(updated_at=T0), lsn=LSN, seq=2))
    assert insert.version > delete.version


# --------------------------------------------------------------------------- validation


class StrictContact(BaseModel):
    full_name: str
    email: str | None
    phone: str | None


def test_a_validation_error_names_the_field_and_the_value() -> None:
    spec = mapping(model="tests.unit.test_declarative_mapper:StrictContact")
    with pytest.raises(MappingError) as caught:
        run(spec, event("c", after=customer(name=1234), offset=41))
    message = str(caught.value)
    assert "field 'full_name'" in message
    assert "1234 (int)" in message
    assert "app.public.customers[0]@41" in message
    assert "StrictContact" in message


def test_a_model_validates_and_converts_values() -> None:
    spec = mapping(
        fields={"customer_id": "str(id)", "name": "name", "email": "email", "phone": "phone"},
        model="mappers.examples:Contact",
    )
    [op] = run(spec, event("c", after=customer()))
    assert op.model == Contact(
        customer_id=7, name="Ada Lovelace", email="ADA@Example.com", phone=None
    )


# --------------------------------------------------------------------------- config errors


def test_an_invalid_filter_is_a_config_error_naming_its_key() -> None:
    with pytest.raises(ConfigError, match=r"integrations\.crm\.mapper\.where: attribute access"):
        declarative_mapper(mapping(where="email.endswith('x')"), integration="crm")


def test_an_invalid_field_expression_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"integrations\.crm\.mapper\.fields\.email: unknown"):
        declarative_mapper(mapping(fields={"email": "sha1(email)"}), integration="crm")


@pytest.mark.parametrize("key", ["{id:>5}", "{id!r}", "{}-{id}", "{row.id}", "{id", "prefix-{{}}"])
def test_an_invalid_key_template_is_a_config_error(key: str) -> None:
    with pytest.raises(ConfigError, match=r"integrations\.crm\.mapper\.key"):
        declarative_mapper(mapping(key=key), integration="crm")


def test_a_model_that_is_not_a_pydantic_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a pydantic model class"):
        declarative_mapper(mapping(model="mappers.examples:customer_to_contact"), integration="crm")


def test_a_model_without_a_mapped_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="has no field 'full_name'"):
        declarative_mapper(mapping(model="mappers.examples:Contact"), integration="crm")


def test_a_model_requiring_an_unmapped_field_is_a_config_error() -> None:
    spec = mapping(fields={"name": "name"}, model="mappers.examples:Contact")
    with pytest.raises(ConfigError, match="requires field 'customer_id'"):
        declarative_mapper(spec, integration="crm")


@pytest.mark.parametrize("name", ["_secret", "model_config", "json", "full name"])
def test_a_target_field_name_a_derived_model_cannot_hold_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"integrations\.crm\.mapper\.fields\.{name}: "):
        declarative_mapper(mapping(fields={name: "name"}), integration="crm")
