"""Inbound dead letters: list an integration's, and put them back on its inbound queue.

An inbound change the database refused for good (a constraint, bad data) is dead-lettered
by ``cdc.inbound.apply`` to ``{prefix}.dlq.{name}.inbound`` and recorded in the state
store's ``dead_letters`` under the integration label ``{name}.inbound`` (its key is the
record key as text, ``{entity}/{external_id}``; its payload the queued change).

Replaying re-enqueues: the kept payload is produced again to the integration's inbound
topic (acks=all, delivery awaited) and the dead letter is marked replayed. The live
inbound worker then applies it like any other change, under its replication origin,
which only one session may hold: that is why replay does not apply the change itself. A
change that fails again is dead-lettered again (a new dead letter).

Invariants: a dead letter is marked replayed only after Kafka acknowledged its record;
a marked one is never re-enqueued again; re-enqueuing a change that was in fact applied
is harmless (its Idempotency-Key marker makes it a duplicate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdc.config import Config
from cdc.config.names import inbound_topic
from cdc.core.errors import ConfigError
from cdc.inbound.replay import REPLAYED_FROM_HEADER, enqueue
from cdc.kafka.publisher import Publisher, producer_config
from cdc.state.store import DeadLetter, StateStore

__all__ = ["InboundRequeueResult", "dead_letter_label", "list_inbound_dead_letters", "requeue"]


@dataclass(frozen=True, slots=True)
class InboundRequeueResult:
    """What ``dlq replay --inbound`` did: ids re-enqueued, ids not pending."""

    integration: str
    requeued: tuple[int, ...]
    not_pending: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "requeued": list(self.requeued),
            "not_pending": list(self.not_pending),
        }


def dead_letter_label(name: str) -> str:
    """The ``integration`` column of ``name``'s inbound dead letters."""
    return f"{name}.inbound"


def _check(config: Config, name: str) -> None:
    integration = config.integrations.get(name)
    if integration is None or integration.inbound is None:
        inbound = sorted(n for n, i in config.integrations.items() if i.inbound is not None)
        raise ConfigError(
            f"integration {name!r} does not accept inbound changes "
            f"(those that do: {', '.join(inbound) or 'none'})"
        )


async def _open(config: Config) -> StateStore:
    return await StateStore.open(config.source.dsn.get_secret_value(), schema=config.state.schema_)


async def list_inbound_dead_letters(
    config: Config, name: str, *, include_replayed: bool = True
) -> list[DeadLetter]:
    _check(config, name)
    state = await _open(config)
    try:
        return await state.dead_letters(dead_letter_label(name), include_replayed=include_replayed)
    finally:
        await state.close()


async def requeue(
    config: Config, name: str, *, ids: Sequence[int] | None = None
) -> InboundRequeueResult:
    """Put ``name``'s pending inbound dead letters (all, or ``ids``) back on its queue."""
    _check(config, name)
    label = dead_letter_label(name)
    state = await _open(config)
    requeued: list[int] = []
    try:
        letters = await state.dead_letters(label, ids=ids)
        pending = {letter.id for letter in letters}
        not_pending = tuple(i for i in dict.fromkeys(ids or ()) if i not in pending)
        if letters:
            topic = inbound_topic(config, name)
            kafka = config.kafka
            publisher = Publisher(
                producer_config(kafka.bootstrap_servers, kafka.client_properties())
            )
            for letter in letters:
                await asyncio.to_thread(_produce, publisher, topic, letter)
                await state.mark_replayed(label, [letter.id])
                requeued.append(letter.id)
    finally:
        await state.close()
    return InboundRequeueResult(name, tuple(requeued), not_pending)


def _produce(publisher: Publisher, topic: str, letter: DeadLetter) -> None:
    if letter.payload is None:
        raise ConfigError(f"inbound dead letter {letter.id}: no payload kept, cannot replay")
    key = None if letter.key is None else letter.key.encode()
    headers: list[tuple[str, str | bytes | None]] = [
        (REPLAYED_FROM_HEADER, str(letter.id).encode())
    ]
    enqueue(
        publisher,
        topic,
        [(key, letter.payload, headers)],
        what=f"inbound dead letter {letter.id}",
    )
