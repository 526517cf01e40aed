"""Configuration of an integration's inbound side: external systems writing back.

``integrations.NAME.inbound`` (``InboundConfig``) says which entity the external system
posts, how a body is validated (``model``, a pydantic model) and turned into table columns
(``mapper``), which table row it lands in (``table``, ``key_column``) and how it is ordered
against the database's own writes (``version_column`` in the table, ``version_field`` in the
body). Requests are authenticated per integration: ``secret`` (HMAC-SHA256 of the body in
``X-Signature: sha256=<hex>``) or ``token`` (``Authorization: Bearer``), at least one.

The names derived from this section (topic, group, dead-letter topic, replication
origin) are in ``cdc.config.names``.

Invariants: frozen like every config model; secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from cdc.config.fields import (
    EntityName,
    Identifier,
    MapperRef,
    SecretValue,
    Section,
    TableName,
    TopicName,
)

__all__ = ["InboundConfig"]


class InboundConfig(Section):
    """What an external system may write back, and how; see the module docstring."""

    secret_fields = ("secret", "token")

    entity: EntityName
    model: MapperRef
    mapper: MapperRef
    table: TableName
    key_column: Identifier = "id"
    version_column: Identifier = "updated_at"
    version_field: str = Field(default="updated_at", min_length=1)
    secret: SecretValue | None = None
    token: SecretValue | None = None
    topic: TopicName | None = None
    group_id: str | None = None
    dead_letter_topic: TopicName | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=64)
    # A change versioned further than this in the future is refused (422): a skewed clock
    # would otherwise win against every later write. None: no limit.
    max_future_s: float | None = Field(default=300.0, ge=0)
    # Seconds the endpoint waits for Kafka's acknowledgement before answering 503.
    enqueue_timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> InboundConfig:
        if self.secret is None and self.token is None:
            raise ValueError(
                "inbound requests must be authenticated: set secret (HMAC of the body) "
                "or token (bearer), e.g. secret_env: CRM_INBOUND_SECRET"
            )
        return self
