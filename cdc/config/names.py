"""Names derived from a configuration, so that each default lives in one place.

Inbound: the topic ``{topic_prefix}.inbound.{name}``, its consumer group
``cdcsync.inbound.{name}``, its dead-letter topic ``{topic_prefix}.dlq.{name}.inbound``
and the replication origin ``cdcsync_{name}`` that marks the database writes it makes (so
capture can tell them apart and put ``ORIGIN_HEADER`` on their events).

Invariant: pure functions of the configuration; a name set explicitly in the
configuration always wins over the derived default.
"""

from __future__ import annotations

import re

from cdc.config.inbound import InboundConfig
from cdc.config.model import Config

__all__ = [
    "ORIGIN_HEADER",
    "ORIGIN_LSN_HEADER",
    "inbound_dead_letter_topic",
    "inbound_group_id",
    "inbound_integrations",
    "inbound_topic",
    "origin_name",
]

# The Kafka header capture puts on events of transactions made under a replication origin.
ORIGIN_HEADER = "cdcsync.origin"
# Beside it, when the origin set one: the transaction's origin LSN (decimal). cdcsync's
# inbound apply puts its echo token there (``mappers.lww.echo_token``).
ORIGIN_LSN_HEADER = "cdcsync.origin.lsn"


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
