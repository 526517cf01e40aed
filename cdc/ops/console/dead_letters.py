"""The console's view of dead letters: counts, rows with previews, replay of one or all.

``DeadLetterDesk`` keeps one state-store connection pool and one registry client for the
console's lifetime (opened on first use, opened again after a failure), so a page that
refreshes every few seconds costs a query, not a connection. Keys and payloads are decoded
through the registry (Confluent wire format); what cannot be decoded is shown as hex.

Replay is ``cdc.sync.dead_letters.replay_dead_letters``, the code behind ``cdcsync dlq
replay``, with its guarantees (replayed only once the sink answered; a failure stays
pending with its new error); one replay per integration runs at a time.

Invariants: read-only except through ``replay``; previews are bounded in size; an
unreachable state store is an error shown on the page, never an exception out of here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdc.config import Config
from cdc.core.errors import CdcsyncError, first_line
from cdc.core.secrets import redact_dsn
from cdc.state.store import DeadLetter, StateStore
from cdc.sync.dead_letters import DlqReplayResult, replay_dead_letters
from schema_registry.client import RegistryClient
from schema_registry.serde import AvroDeserializer

__all__ = ["DeadLetterDesk", "DeadLetterRow", "ReplayBusy"]

PREVIEW_CHARS = 160
PAYLOAD_CHARS = 4000


class ReplayBusy(CdcsyncError):
    """A replay of the integration's dead letters is already running."""


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead letter as the console shows it."""

    id: int
    key: str | None
    error: str
    attempts: int
    replay_attempts: int
    origin: str
    created_at: str
    preview: str
    payload: str


class DeadLetterDesk:
    """Dead letters of the integrations of ``config``, for the console."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._state: StateStore | None = None
        self._registry: RegistryClient | None = None
        self._opening = asyncio.Lock()
        self._replaying: dict[str, asyncio.Lock] = {}

    async def _store(self) -> StateStore:
        async with self._opening:
            if self._state is None:
                self._state = await StateStore.open(
                    self.config.state_dsn().get_secret_value(),
                    schema=self.config.state.schema_,
                    timeout_s=5,
                )
            return self._state

    def _deserializer(self) -> AvroDeserializer:
        if self._registry is None:
            registry = self.config.registry
            self._registry = RegistryClient.from_url(registry.url, auth=registry.auth())
        return AvroDeserializer(self._registry)

    async def counts(self) -> tuple[dict[str, int], str | None]:
        """Pending dead letters per integration, or ``({}, why not)``."""
        try:
            state = await self._store()
            counts = await state.dead_letter_counts()
        except CdcsyncError as exc:
            await self._drop_state()
            return {}, redact_dsn(first_line(exc))
        return {name: pending for name, (pending, _) in counts.items()}, None

    async def rows(self, name: str) -> tuple[list[DeadLetterRow], str | None]:
        """``name``'s pending dead letters, oldest first, or ``([], why not)``."""
        try:
            state = await self._store()
            letters = await state.dead_letters(name)
        except CdcsyncError as exc:
            await self._drop_state()
            return [], redact_dsn(first_line(exc))
        deserializer = self._deserializer()
        return [await _row(deserializer, letter) for letter in letters], None

    def replaying(self, name: str) -> bool:
        lock = self._replaying.get(name)
        return lock is not None and lock.locked()

    async def replay(self, name: str, ids: Sequence[int] | None) -> DlqReplayResult:
        """Re-apply ``name``'s pending dead letters (``ids``, or all when None)."""
        lock = self._replaying.setdefault(name, asyncio.Lock())
        if lock.locked():
            raise ReplayBusy(f"a replay of {name}'s dead letters is already running")
        async with lock:
            return await replay_dead_letters(self.config, name, ids=ids)

    async def _drop_state(self) -> None:
        state, self._state = self._state, None
        if state is not None:
            await state.close()

    async def close(self) -> None:
        await self._drop_state()
        registry, self._registry = self._registry, None
        if registry is not None:
            await registry.aclose()


async def _row(deserializer: AvroDeserializer, letter: DeadLetter) -> DeadLetterRow:
    key = None if letter.key is None else await _decoded(deserializer, bytes.fromhex(letter.key))
    if isinstance(key, dict) and len(key) == 1:
        key = next(iter(key.values()))
    payload = "" if letter.payload is None else _text(await _decoded(deserializer, letter.payload))
    origin = letter.origin
    return DeadLetterRow(
        id=letter.id,
        key=None if key is None else (key if isinstance(key, str) else _text(key)),
        error=letter.error,
        attempts=letter.attempts,
        replay_attempts=letter.replay_attempts,
        origin=f"{origin.topic}[{origin.partition}]@{origin.offset}",
        created_at=letter.created_at.isoformat(timespec="seconds"),
        preview=_clip(payload, PREVIEW_CHARS) if payload else "(kept in the dead-letter topic)",
        payload=_clip(payload, PAYLOAD_CHARS),
    )


async def _decoded(deserializer: AvroDeserializer, raw: bytes) -> Any:
    """Avro in the Confluent wire format decoded through the registry, else the bytes as hex."""
    try:
        return await deserializer.deserialize(raw)
    except Exception:  # anything undecodable is shown as it is stored
        return raw.hex()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("after") or value.get("before"), dict):
        # A change event: the row is what an operator recognises.
        op = value.get("op")
        row = value.get("after") or value.get("before")
        return f"op={op} " + json.dumps(row, default=str, ensure_ascii=False)
    return json.dumps(value, default=str, ensure_ascii=False)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
