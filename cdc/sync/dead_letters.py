"""Dead letters: list an integration's, and replay them through its current mapper and sink.

``list_dead_letters`` reads the state store's bookkeeping (``dead_letters``) and decodes each
record's key through the registry when it can. ``replay_dead_letters`` re-applies pending
dead letters one by one with the same ``Applier`` as the live worker, rebuilt from the
CURRENT configuration: a fixed mapper or a target that now accepts the entity applies them.

Invariants:
- A dead letter is re-applied from the payload the state store kept, else from its record
  in the dead-letter topic; the event keeps its original origin (topic, partition, offset).
- Only a dead letter whose record was applied (or found older/duplicate by the sink) is
  marked replayed, after the sink answered; a marked one is never replayed again.
- One that fails again stays pending with the new error and one more ``replay_attempts``;
  it is not sent to the dead-letter topic a second time.
- The live integration need not be paused: sinks are idempotent and version-guarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from cdc.config import Config
from cdc.core.errors import FatalError, MappingError, RelationPending, first_line
from cdc.kafka.replay_plan import replay_consumer_config
from cdc.state.store import DeadLetter, StateStore
from cdc.sync.runtime import load_mappers, select_integrations
from cdc.sync.sinks import build_sink
from cdc.sync.worker import Applier, IntegrationStats
from schema_registry.client import RegistryClient
from schema_registry.serde import AvroDeserializer

__all__ = ["DlqReplayResult", "dead_letter_rows", "list_dead_letters", "replay_dead_letters"]

log = logging.getLogger("cdcsync.dlq")


@dataclass(frozen=True, slots=True)
class DlqReplayResult:
    """What ``dlq replay`` did: ids replayed, ids that failed again (with why), ids skipped."""

    integration: str
    replayed: tuple[int, ...]
    failed: tuple[tuple[int, str], ...]
    not_pending: tuple[int, ...]
    applied: int
    older: int
    duplicate: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "replayed": list(self.replayed),
            "failed": [{"id": i, "error": e} for i, e in self.failed],
            "not_pending": list(self.not_pending),
            "applied": self.applied,
            "older": self.older,
            "duplicate": self.duplicate,
        }


async def _open_state(config: Config) -> StateStore:
    return await StateStore.open(config.state_dsn().get_secret_value(), schema=config.state.schema_)


async def list_dead_letters(
    config: Config, name: str, *, include_replayed: bool = True
) -> list[dict[str, Any]]:
    """``name``'s dead letters as JSON-ready rows (see ``dead_letter_rows``), oldest first."""
    select_integrations(config, [name])
    state = await _open_state(config)
    try:
        letters = await state.dead_letters(name, include_replayed=include_replayed)
    finally:
        await state.close()
    registry = RegistryClient.from_url(config.registry.url, auth=config.registry.auth())
    try:
        keys = [await _decoded_key(AvroDeserializer(registry), letter) for letter in letters]
    finally:
        await registry.aclose()
    return dead_letter_rows(letters, keys=keys)


async def _decoded_key(deserializer: AvroDeserializer, letter: DeadLetter) -> str | None:
    """The record key as text: decoded through the registry when possible, else hex."""
    if letter.key is None:
        return None
    try:
        decoded = await deserializer.deserialize(bytes.fromhex(letter.key))
    except Exception:  # an undecodable key is shown as it is stored
        return letter.key
    if isinstance(decoded, dict) and len(decoded) == 1:
        return str(next(iter(decoded.values())))
    return str(decoded)


def dead_letter_rows(
    letters: Sequence[DeadLetter], *, keys: Sequence[str | None] | None = None
) -> list[dict[str, Any]]:
    """JSON-ready rows: id, origin, key, error, attempts, when, replayed."""
    shown = keys if keys is not None else [letter.key for letter in letters]
    return [
        {
            "id": letter.id,
            "topic": letter.origin.topic,
            "partition": letter.origin.partition,
            "offset": letter.origin.offset,
            "key": key,
            "error": letter.error,
            "attempts": letter.attempts,
            "replay_attempts": letter.replay_attempts,
            "created_at": letter.created_at.isoformat(),
            "replayed_at": None if letter.replayed_at is None else letter.replayed_at.isoformat(),
        }
        for letter, key in zip(letters, shown, strict=True)
    ]


class _Unresolved(MappingError):
    """The related entity a dead letter needs is still unknown."""


class _ReplayApplier(Applier):
    """The live Applier, except that a failure is collected instead of dead-lettered again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failure: str | None = None

    async def dead_letter(self, msg: Message, error: BaseException, *, attempts: int) -> None:
        self.failure = self.failure or first_line(error)[:2000]

    async def _resolve(self, pending: RelationPending, stop: asyncio.Event) -> None:
        found = await self.state.external_ids(
            pending.integration, pending.entity, keys=[pending.key]
        )
        if pending.key not in found:
            raise _Unresolved(str(pending))
        self.context.known[(pending.integration, pending.entity, pending.key)] = found[pending.key]


async def replay_dead_letters(
    config: Config,
    name: str,
    *,
    ids: Sequence[int] | None = None,
    stop: asyncio.Event | None = None,
) -> DlqReplayResult:
    """Re-apply ``name``'s pending dead letters (all, or ``ids``); see the module docstring."""
    select_integrations(config, [name])
    mapper = load_mappers(config, [name])[name]
    stop = stop or asyncio.Event()
    state = await _open_state(config)
    registry = RegistryClient.from_url(config.registry.url, auth=config.registry.auth())
    sink = build_sink(name, config, state=state)
    stats = IntegrationStats()
    replayed: list[int] = []
    failed: list[tuple[int, str]] = []
    try:
        letters = await state.dead_letters(name, ids=ids)
        pending = {letter.id for letter in letters}
        not_pending = tuple(i for i in dict.fromkeys(ids or ()) if i not in pending)
        if letters:
            await sink.start()
        applier = _ReplayApplier(
            name,
            config,
            mapper=mapper,
            sink=sink,
            state=state,
            deserializer=AvroDeserializer(registry),
            stats=stats,
        )
        for letter in letters:
            if stop.is_set():
                break
            applier.failure = None
            try:
                msg = await asyncio.to_thread(_message, config, name, letter)
                await applier.handle([msg], stop)
            except FatalError as exc:
                applier.failure = first_line(exc)[:2000]
            if applier.failure is None:
                await state.mark_replayed(name, [letter.id])
                replayed.append(letter.id)
                log.info("%s: dead letter %d replayed", name, letter.id)
            else:
                await state.record_replay_failure(name, letter.id, error=applier.failure)
                failed.append((letter.id, applier.failure))
                log.warning("%s: dead letter %d failed again: %s", name, letter.id, applier.failure)
    finally:
        with contextlib.suppress(Exception):
            await sink.close()
        with contextlib.suppress(Exception):
            await registry.aclose()
        await state.close()
    return DlqReplayResult(
        integration=name,
        replayed=tuple(replayed),
        failed=tuple(failed),
        not_pending=not_pending,
        applied=stats.applied,
        older=stats.older,
        duplicate=stats.duplicate,
    )


def _message(config: Config, name: str, letter: DeadLetter) -> Message:
    """The dead-lettered record, carrying its original origin."""
    key = None if letter.key is None else bytes.fromhex(letter.key)
    value = letter.payload
    if value is None:
        key, value = _read_dead_letter_topic(config, name, letter)
    origin = letter.origin
    return Message(
        topic=origin.topic, partition=origin.partition, offset=origin.offset, key=key, value=value
    )


def _read_dead_letter_topic(
    config: Config, name: str, letter: DeadLetter
) -> tuple[bytes | None, bytes | None]:
    if letter.dlq_partition is None or letter.dlq_offset is None:
        raise MappingError(f"dead letter {letter.id}: no payload stored and no dead-letter offset")
    consumer = Consumer(replay_consumer_config(config, name))
    try:
        consumer.assign([TopicPartition(letter.dlq_topic, letter.dlq_partition, letter.dlq_offset)])
        for _ in range(20):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                break
            if err is None and msg.offset() == letter.dlq_offset:
                return msg.key(), msg.value()
            break
    finally:
        consumer.close()
    raise MappingError(
        f"dead letter {letter.id}: its record is no longer in {letter.dlq_topic}"
        f"[{letter.dlq_partition}]@{letter.dlq_offset}"
    )


def print_dead_letters(rows: Sequence[dict[str, Any]]) -> None:
    """``cdcsync dlq list``'s table on stdout."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=None, show_lines=False)
    for column in ("id", "origin", "key", "error", "attempts", "when", "replayed"):
        table.add_column(column, overflow="fold")
    for row in rows:
        replayed = row["replayed_at"] or "no"
        if row["replay_attempts"]:
            replayed += f" ({row['replay_attempts']} failed replay(s))"
        table.add_row(
            str(row["id"]),
            f"{row['topic']}[{row['partition']}]@{row['offset']}",
            "" if row["key"] is None else str(row["key"]),
            row["error"],
            str(row["attempts"]),
            row["created_at"][:19],
            replayed,
        )
    console = Console(width=max(Console().width, 140))
    if rows:
        console.print(table)
    else:
        console.print("no dead letters")
