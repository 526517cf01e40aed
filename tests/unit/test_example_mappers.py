"""The example integrations: customers -> CRM contacts, orders -> analytics facts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from cdc.core.errors import MappingError, RelationPending
from mappers.entity import EntityDelete, EntityUpsert, Origin, TableEvent, Version
from mappers.examples import (
    CRM_INTEGRATION,
    SAMPLE_SCHEMA_SQL,
    Contact,
    OrderFact,
    customer_to_contact,
    order_to_fact,
)
from mappers.loader import load_mapper
from tests.unit.events import table_event

LSN = 0x2_0000_0000
T0 = "2026-03-01T10:00:00.000000Z"
T1 = "2026-03-01T10:00:00.000001Z"


@dataclass
class IdentityMap:
    """A MapContext backed by a dict: (integration, entity, key) -> external id."""

    integration: str
    ids: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def external_id(self, integration: str, entity: str, key: object) -> str:
        try:
            return self.ids[(integration, entity, str(key))]
        except KeyError:
            raise RelationPending(integration=integration, entity=entity, key=str(key)) from None


def change(table: str, op: str, **fields: Any) -> TableEvent:
    """An event of ``public.{table}`` at offset 5 with this file's LSN by default."""
    fields.setdefault("lsn", LSN)
    fields.setdefault("offset", 5)
    return table_event(table, op, **fields)


def customer(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": None,
        "updated_at": T0,
    }
    row.update(changes)
    return row


def order(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 1001,
        "customer_id": 7,
        "amount": Decimal("99.90"),
        "status": "paid",
        "created_at": T0,
    }
    row.update(changes)
    return row


CRM = IdentityMap(integration=CRM_INTEGRATION)
ANALYTICS = IdentityMap(integration="analytics", ids={(CRM_INTEGRATION, "contact", "7"): "crm-42"})


# --------------------------------------------------------------------------- schema


def test_the_sample_schema_creates_both_tables_idempotently() -> None:
    creates = re.findall(r"CREATE TABLE (IF NOT EXISTS )?public\.(\w+)", SAMPLE_SCHEMA_SQL)
    assert creates == [("IF NOT EXISTS ", "customers"), ("IF NOT EXISTS ", "orders")]
    assert "REFERENCES public.customers (id)" in SAMPLE_SCHEMA_SQL
    assert "numeric(12, 2)" in SAMPLE_SCHEMA_SQL


# --------------------------------------------------------------------------- customers -> contacts


def test_a_new_customer_becomes_a_contact_keyed_by_its_id() -> None:
    [op] = customer_to_contact(change("customers", "c", after=customer()), CRM)
    assert isinstance(op, EntityUpsert)
    assert (op.entity, op.key) == ("contact", "7")
    assert op.model == Contact(
        customer_id=7, name="Ada Lovelace", email="ada@example.com", phone=None
    )
    assert op.fields() == {
        "customer_id": 7,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": None,
    }


def test_contacts_are_versioned_by_commit_order_not_by_updated_at() -> None:
    [later] = customer_to_contact(
        change("customers", "u", after=customer(updated_at=T0), lsn=LSN + 500), CRM
    )
    [earlier] = customer_to_contact(
        change("customers", "u", after=customer(updated_at=T1), lsn=LSN), CRM
    )
    assert later.version > earlier.version
    assert later.version == Version.from_lsn(LSN + 500, 1)


def test_a_deleted_customer_deletes_its_contact() -> None:
    [op] = customer_to_contact(change("customers", "d", before=customer(updated_at=T1)), CRM)
    assert isinstance(op, EntityDelete)
    assert (op.entity, op.key) == ("contact", "7")
    assert op.version == Version.from_lsn(LSN, 1)


def test_a_delete_then_reinsert_in_one_transaction_leaves_the_contact_present() -> None:
    """Issue 16.1: the re-insert's updated_at (the transaction's start) is older than the
    delete's commit time; commit order puts the re-insert last, as the source has it."""
    [delete] = customer_to_contact(
        change("customers", "d", key={"id": 7}, ts_us=10**18, seq=1), CRM
    )
    [insert] = customer_to_contact(
        change("customers", "c", after=customer(updated_at=T0), seq=2), CRM
    )
    assert isinstance(insert, EntityUpsert)
    assert insert.version > delete.version


def test_an_update_after_a_future_dated_inbound_write_is_newer() -> None:
    """Issue 16.2: an inbound write set updated_at an hour ahead; the application's later
    UPDATE (updated_at = now()) commits after it and must win at every target."""
    [inbound] = customer_to_contact(
        change("customers", "u", after=customer(updated_at="2026-03-01T11:00:00Z"), lsn=LSN),
        CRM,
    )
    [app] = customer_to_contact(
        change("customers", "u", after=customer(updated_at=T0), lsn=LSN + 8), CRM
    )
    assert app.version > inbound.version


def test_a_delete_with_only_the_key_is_versioned_by_its_commit() -> None:
    [op] = customer_to_contact(change("customers", "d", key={"id": 7}, ts_us=123_456), CRM)
    assert op == EntityDelete(
        entity="contact",
        key="7",
        version=Version.from_lsn(LSN, 1),
        origin=Origin("app.public.customers", 0, 5),
    )


def test_a_contact_leaves_out_unchanged_toast_columns() -> None:
    row = customer(email="__debezium_unavailable_value")
    [op] = customer_to_contact(
        change("customers", "u", after=row, unavailable=frozenset({"email"})), CRM
    )
    assert isinstance(op, EntityUpsert)
    assert op.unavailable == frozenset({"email"})
    assert op.fields() == {"customer_id": 7, "name": "Ada Lovelace", "phone": None}


def test_an_invalid_customer_row_is_a_mapping_error_naming_the_field() -> None:
    with pytest.raises(MappingError) as caught:
        customer_to_contact(change("customers", "c", after=customer(name=None)), CRM)
    assert "field 'name'" in str(caught.value)
    assert "None" in str(caught.value)


def test_a_truncate_of_customers_maps_to_nothing() -> None:
    assert customer_to_contact(change("customers", "t", key={}), CRM) == []


# --------------------------------------------------------------------------- orders -> facts


def test_an_order_becomes_a_fact_linked_to_the_crm_id_of_its_customer() -> None:
    [op] = order_to_fact(change("orders", "c", after=order(), seq=3), ANALYTICS)
    assert isinstance(op, EntityUpsert)
    assert (op.entity, op.key) == ("order", "1001")
    assert op.model == OrderFact(
        order_id=1001,
        customer_id=7,
        customer_crm_id="crm-42",
        amount=Decimal("99.90"),
        status="paid",
    )
    assert op.version == Version.from_lsn(LSN, 3)


def test_an_order_of_a_customer_unknown_to_the_crm_waits() -> None:
    with pytest.raises(RelationPending) as caught:
        order_to_fact(change("orders", "c", after=order(customer_id=8)), ANALYTICS)
    assert (caught.value.integration, caught.value.entity, caught.value.key) == (
        "crm",
        "contact",
        "8",
    )


def test_an_order_waits_through_the_loaded_mapper_too() -> None:
    mapper = load_mapper("mappers.examples:order_to_fact", integration="analytics")
    with pytest.raises(RelationPending):
        mapper(change("orders", "c", after=order(customer_id=8)), ANALYTICS)
    [op] = mapper(change("orders", "u", after=order()), ANALYTICS)
    assert isinstance(op, EntityUpsert)
    assert op.fields()["amount"] == "99.90"


def test_a_deleted_order_deletes_its_fact_without_asking_the_identity_map() -> None:
    [op] = order_to_fact(change("orders", "d", before=order(customer_id=8), seq=2), ANALYTICS)
    assert op == EntityDelete(
        entity="order",
        key="1001",
        version=Version.from_lsn(LSN, 2),
        origin=Origin("app.public.orders", 0, 5),
    )


def test_an_invalid_order_amount_is_a_mapping_error_naming_the_field() -> None:
    with pytest.raises(MappingError, match=r"field 'amount'.*'lots'"):
        order_to_fact(change("orders", "c", after=order(amount="lots")), ANALYTICS)


def test_a_truncate_of_orders_maps_to_nothing() -> None:
    assert order_to_fact(change("orders", "t", key={}), ANALYTICS) == []
