"""The two example integrations used by ``cdcsync demo`` and the tests.

- ``SAMPLE_SCHEMA_SQL`` creates the sample tables ``public.customers`` and
  ``public.orders`` (idempotent: ``IF NOT EXISTS``).
- ``crm`` (``CRM_INTEGRATION``): ``customer_to_contact`` maps a customer row onto a CRM
  ``Contact`` keyed by the customer id, ordered by ``updated_at``.
- ``analytics``: ``order_to_fact`` maps an order row onto an ``OrderFact`` keyed by the
  order id (default LSN version) and links it to the CRM's id of its customer through
  the identity map: ``ctx.external_id("crm", "contact", customer_id)``. Until the CRM
  has given the customer an id this raises ``RelationPending`` and the order waits.

Rows are what the Avro deserializer gives: ``bigint`` as ``int``, ``numeric(12,2)`` as
``decimal.Decimal``, ``timestamptz`` as an ISO-8601 string.

Invariants: deletes map to ``EntityDelete`` of the same key; truncates map to nothing;
an upsert lists in ``unavailable`` the target fields fed by unchanged TOAST columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from cdc.core.errors import MappingError
from mappers.declarative import partial_model, validate_model
from mappers.entity import EntityOp, MapContext, TableEvent

CRM_INTEGRATION: Final = "crm"
"""The integration whose contacts' external ids orders refer to."""

SAMPLE_SCHEMA_SQL: Final = """\
CREATE TABLE IF NOT EXISTS public.customers (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email text,
    phone text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""


class Contact(BaseModel):
    """A CRM contact made from a customer."""

    model_config = ConfigDict(frozen=True)

    customer_id: int
    name: str
    email: str | None
    phone: str | None


class OrderFact(BaseModel):
    """An analytics fact made from an order, linked to the CRM's id of its customer."""

    model_config = ConfigDict(frozen=True)

    order_id: int
    customer_id: int
    customer_crm_id: str
    amount: Decimal
    status: str


# source column -> Contact field, for the columns that may be unchanged TOAST values
_CONTACT_FIELDS: Final = {"name": "name", "email": "email", "phone": "phone"}
_ORDER_FIELDS: Final = {"status": "status"}


def customer_to_contact(event: TableEvent, ctx: MapContext) -> list[EntityOp]:
    """``public.customers`` -> CRM ``contact`` keyed by customer id, in commit order."""
    if event.op == "t":
        return []
    if event.op == "d":
        return [event.delete("contact", _key(event, "id"))]
    row = _after(event)
    key = _key(event, "id")
    hidden = {f for column, f in _CONTACT_FIELDS.items() if column in event.unavailable}
    data = {
        "customer_id": row.get("id"),
        **{f: (None if f in hidden else row.get(column)) for column, f in _CONTACT_FIELDS.items()},
    }
    model = validate_model(
        partial_model(Contact, frozenset(hidden)),
        data,
        context=f"{ctx.integration}: contact {key} from {event.origin}",
    )
    upsert = event.upsert("contact", key, model)
    return [replace(upsert, unavailable=frozenset(hidden))]


def order_to_fact(event: TableEvent, ctx: MapContext) -> list[EntityOp]:
    """``public.orders`` -> analytics ``order`` keyed by order id, linked to the CRM contact."""
    if event.op == "t":
        return []
    if event.op == "d":
        return [event.delete("order", _key(event, "id"))]
    row = _after(event)
    key = _key(event, "id")
    customer_id = row.get("customer_id")
    if customer_id is None:
        raise MappingError(f"{ctx.integration}: {event.origin}: order {key} has no customer_id")
    hidden = {f for column, f in _ORDER_FIELDS.items() if column in event.unavailable}
    data = {
        "order_id": row.get("id"),
        "customer_id": customer_id,
        "customer_crm_id": ctx.external_id(CRM_INTEGRATION, "contact", customer_id),
        "amount": row.get("amount"),
        **{f: (None if f in hidden else row.get(column)) for column, f in _ORDER_FIELDS.items()},
    }
    model = validate_model(
        partial_model(OrderFact, frozenset(hidden)),
        data,
        context=f"{ctx.integration}: order {key} from {event.origin}",
    )
    return [replace(event.upsert("order", key, model), unavailable=frozenset(hidden))]


def example_integrations(
    *, topic_prefix: str, crm_url: str, analytics_dsn: str, secret_env: str, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """The ``integrations`` config of both examples: the CRM at ``crm_url`` (its
    ``/contacts/{key}`` and ``/health``, bodies signed with the secret in ``secret_env``)
    and ``analytics.orders`` (created if missing) in the database at ``analytics_dsn``.
    """
    return {
        CRM_INTEGRATION: {
            "topics": [f"{topic_prefix}.public.customers"],
            "mapper": "mappers.examples:customer_to_contact",
            "sink": {
                "type": "http",
                "url": crm_url + "/contacts/{key}",
                "secret_env": secret_env,
                "external_id_field": "id",
                "health_url": crm_url + "/health",
                "timeout_s": timeout_s,
            },
        },
        "analytics": {
            "topics": [f"{topic_prefix}.public.orders"],
            "mapper": "mappers.examples:order_to_fact",
            "sink": {
                "type": "postgres",
                "dsn": analytics_dsn,
                "table": "analytics.orders",
                "create_table": True,
            },
        },
    }


def _after(event: TableEvent) -> Mapping[str, Any]:
    if event.after is None:
        raise MappingError(f"{event.origin}: {event.op!r} event has no row")
    return event.after


def _key(event: TableEvent, column: str) -> str:
    value = event.row.get(column)
    if value is None and event.key is not None:
        value = event.key.get(column)
    if value is None:
        raise MappingError(f"{event.origin}: key column {column!r} is missing or null")
    return str(value)
