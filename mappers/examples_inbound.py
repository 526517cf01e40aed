"""The example CRM integration's inbound side: a contact edited in the CRM -> ``public.customers``.

``ContactChange`` validates what the CRM posts (unknown fields are refused, so a typo is a
422 naming the field, not a silently dropped value); ``contact_to_customer`` maps it onto
the customer's columns. ``updated_at`` is the CRM's edit time: the change's version, compared
with ``customers.updated_at`` (last writer wins) and written there when the change wins.

``INBOUND_SCHEMA_SQL`` gives ``customers.id`` a default from its own sequence (started far
above hand-assigned ids) so that a contact created in the CRM becomes a new customer.

Invariants: the mapper is pure; it never sets the key or the version column.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["INBOUND_SCHEMA_SQL", "ContactChange", "contact_to_customer", "crm_inbound_config"]

INBOUND_SCHEMA_SQL: Final = """\
CREATE SEQUENCE IF NOT EXISTS public.customers_inbound_id_seq START 1000000001;
ALTER TABLE public.customers ALTER COLUMN id SET DEFAULT nextval('public.customers_inbound_id_seq');
"""


class ContactChange(BaseModel):
    """A contact as the CRM posts it back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    phone: str | None = Field(default=None, max_length=50)
    updated_at: AwareDatetime


def contact_to_customer(change: BaseModel) -> dict[str, Any]:
    """``ContactChange`` -> the ``public.customers`` columns it sets."""
    assert isinstance(change, ContactChange)
    return {"name": change.name, "email": change.email, "phone": change.phone}


def crm_inbound_config(*, secret_env: str) -> dict[str, Any]:
    """The ``inbound`` section of the example CRM integration (bodies signed with the secret
    in ``secret_env``)."""
    return {
        "entity": "contact",
        "model": "mappers.examples_inbound:ContactChange",
        "mapper": "mappers.examples_inbound:contact_to_customer",
        "table": "public.customers",
        "key_column": "id",
        "version_column": "updated_at",
        "version_field": "updated_at",
        "secret_env": secret_env,
    }
