"""Configuration of an integration's inbound side: external systems writing back.

``integrations.NAME.inbound`` (``InboundConfig``) says which entity the external system
posts, how a body is validated (``model``, a pydantic model) and turned into table columns
(``mapper``), which table row it lands in (``table``, ``key_column``) and how it is ordered
against the database's own writes (``version_column`` in the table, ``version_field`` in the
body). Requests are authenticated per integration: ``secret`` (HMAC-SHA256 of the body in
``X-Signature: sha256=<hex>``) or ``token`` (``Authorization: Bearer``), at least one.

Derived names (functions below, so the defaults live in one place): the inbound topic
``{topic_prefix}.inbound.{name}``, its consumer group ``cdcsync.inbound.{name}``, its
dead-letter topic ``{topic_prefix}.dlq.{name}.inbound`` and the replication origin
``cdcsync_{name}`` that marks the database writes it makes (so capture can tell them apart).

Invariants: frozen like every config model; secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from cdc.config_fields import (
    EntityName,
    Identifier,
    MapperRef,
    SecretValue,
    Section,
    TableName,
    TopicName,
)

if TYPE_CHECKING:
    from cdc.config import Config

__all__ = [
    "ORIGIN_HEADER",
    "InboundConfig",
    "inbound_dead_letter_topic",
    "inbound_group_id",
    "inbound_integrations",
    "inbound_topic",
    "origin_name",
]


# The Kafka header capture puts on events of transactions made under a replication origin.
ORIGIN_HEADER = "cdcsync.origin"


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


def inbound_integrations(config: Config) -> dict[str, InboundConfig]:
    """The enabled integrations that accept inbound changes."""
    return {
        name: integration.inbound
        for name, integration in config.integrations.items()
        if integration.enabled and integration.inbound is not None
    }


def _inbound(config: Config, name: str) -> InboundConfig:
    inbound = config.integrations[name].inbound
    assert inbound is not None, f"integration {name!r} has no inbound section"
    return inbound


def inbound_topic(config: Config, name: str) -> str:
    return _inbound(config, name).topic or f"{config.kafka.topic_prefix}.inbound.{name}"


def inbound_group_id(config: Config, name: str) -> str:
    return _inbound(config, name).group_id or f"cdcsync.inbound.{name}"


def inbound_dead_letter_topic(config: Config, name: str) -> str:
    return (
        _inbound(config, name).dead_letter_topic
        or f"{config.kafka.topic_prefix}.dlq.{name}.inbound"
    )


_UNSAFE = re.compile(r"[^a-z0-9_]")


def origin_name(integration: str) -> str:
    """The replication origin of the database writes made for ``integration``."""
    return "cdcsync_" + _UNSAFE.sub("_", integration.lower())
