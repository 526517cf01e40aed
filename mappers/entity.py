"""Values exchanged between the sync stages: table events in, versioned entity operations out.

- ``TableEvent``: one captured change as a mapper sees it (the decoded Debezium envelope
  plus where it was read from on Kafka).
- ``Version``: the total order of last-writer-wins. ``(major, lsn, seq)`` compared as a
  tuple; every event's version is its commit LSN (``major`` and ``lsn``), then its position
  in the transaction (the source's commit order; the rules are in ``mappers.lww``).
  ``to_bytes()`` is fixed-width and compares bytewise in the same order, so a ``bytea``
  column in PostgreSQL orders versions exactly as Python does.
- ``EntityUpsert`` / ``EntityDelete``: what a mapper yields and a sink applies. A delete
  is a versioned tombstone: no upsert with an older or equal version may resurrect it.
- ``Mapper``: ``(TableEvent, MapContext) -> Iterable[EntityOp]``; zero, one or several
  operations per event. ``MapContext.external_id`` resolves a related entity's id in
  another integration through the identity map, raising ``RelationPending`` (the event
  is retried later, never dropped) when it is not known yet.

Invariants: all values are frozen; an upsert never carries a field named in its
``unavailable`` set (unchanged TOAST values are left out, never written as placeholders);
two deliveries of the same Kafka record give equal operations with equal versions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Protocol

from pydantic import BaseModel

from cdc.core.errors import MappingError
from cdc.core.lsn import Lsn

_VERSION: Final = struct.Struct(">QQI")
_MAJOR_OFFSET: Final = 1 << 63
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A last-writer-wins version: larger wins, equal is the same write."""

    major: int
    lsn: int
    seq: int

    @classmethod
    def from_lsn(cls, lsn: int, seq: int) -> Version:
        """The default version: commit LSN, then the position in the transaction."""
        return cls(int(lsn), int(lsn), seq)

    def to_bytes(self) -> bytes:
        """Fixed-width big-endian bytes; bytewise order equals version order."""
        return _VERSION.pack(self.major + _MAJOR_OFFSET, self.lsn, self.seq)

    @classmethod
    def from_bytes(cls, data: bytes) -> Version:
        major, lsn, seq = _VERSION.unpack(bytes(data))
        return cls(major - _MAJOR_OFFSET, lsn, seq)

    def __str__(self) -> str:
        head = "" if self.major == self.lsn else f"{self.major}@"
        return f"{head}{Lsn(self.lsn)}#{self.seq}"


def microseconds(value: object, *, column: str) -> int:
    """A version column's value as an integer (microseconds for temporal values).

    Accepts ints (taken as they are: microseconds for Avro timestamp-micros, or a plain
    counter column), datetimes (naive ones are UTC), dates and ISO-8601 strings (Debezium's
    ZonedTimestamp). Anything else is a ``MappingError`` naming the column and value.
    """
    if isinstance(value, bool):
        raise MappingError(f"version column {column!r}: {value!r} is not a time or a number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise MappingError(
                f"version column {column!r}: {value!r} is not an ISO-8601 timestamp"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, date):
        return (value - _EPOCH.date()).days * 86_400 * 1_000_000
    raise MappingError(f"version column {column!r}: {value!r} is not a time or a number")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record was read: reported in dead letters and logs."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class TableEvent:
    """One captured row change (``op`` c, u, d, r or t) as read back from Kafka."""

    origin: Origin
    op: str
    schema: str
    table: str
    key: Mapping[str, Any] | None
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    unavailable: frozenset[str]
    commit_lsn: int
    seq: int
    ts_us: int
    snapshot: bool = False

    @classmethod
    def from_envelope(
        cls, value: Mapping[str, Any], *, key: Mapping[str, Any] | None, origin: Origin
    ) -> TableEvent:
        """Build from a decoded envelope (``before``/``after``/``source``/``op``/...)."""
        try:
            source = value["source"]
            op = value["op"]
            lsn = source.get("commit_lsn") or source.get("lsn") or 0
            tx = value.get("transaction") or {}
            ts_us = source.get("ts_us") or source["ts_ms"] * 1000
            snapshot = source.get("snapshot") not in (None, "false")
            return cls(
                origin=origin,
                op=op,
                schema=source["schema"],
                table=source["table"],
                key=key,
                before=value.get("before"),
                after=value.get("after"),
                unavailable=frozenset(value.get("unavailable_columns") or ()),
                commit_lsn=int(lsn),
                seq=int(tx.get("total_order") or 0),
                ts_us=int(ts_us),
                snapshot=snapshot,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise MappingError(f"{origin}: not a change envelope ({exc!r} missing)") from None

    @property
    def table_name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def row(self) -> Mapping[str, Any]:
        """The row's newest known image: ``after``, else ``before``, else the key."""
        return self.after or self.before or self.key or {}

    def version(self, column: str | None = None) -> Version:
        """This event's version: its commit LSN, then its position in the transaction.

        Every change made in the source is ordered by the source's commit order, whatever
        it is (insert, update, delete with any before-image, snapshot read, inbound write);
        see ``mappers.lww``. ``column`` (a ``version_column`` such as ``updated_at``) is
        accepted for mappers written against earlier releases and does not change the
        version: a column's value is another clock, never compared with commit order.
        """
        del column
        return Version.from_lsn(self.commit_lsn, self.seq)

    def upsert(
        self, entity: str, key: object, model: BaseModel, *, version_column: str | None = None
    ) -> EntityUpsert:
        """An upsert of ``model``, leaving out the fields this event could not see."""
        return EntityUpsert(
            entity=entity,
            key=str(key),
            version=self.version(version_column),
            model=model,
            unavailable=self.unavailable,
            origin=self.origin,
        )

    def delete(
        self, entity: str, key: object, *, version_column: str | None = None
    ) -> EntityDelete:
        return EntityDelete(
            entity=entity, key=str(key), version=self.version(version_column), origin=self.origin
        )


@dataclass(frozen=True, slots=True)
class EntityUpsert:
    """Create or replace entity ``key`` with ``model`` unless a newer version is there."""

    entity: str
    key: str
    version: Version
    model: BaseModel
    unavailable: frozenset[str] = field(default_factory=frozenset)
    origin: Origin | None = None
    # Nonzero: this operation echoes the integration's own inbound write (``mappers.lww``).
    echo_token: int = 0

    def fields(self) -> dict[str, Any]:
        """The JSON-ready fields to write: the model's, minus unavailable ones."""
        return self.model.model_dump(mode="json", exclude=set(self.unavailable) or None)


@dataclass(frozen=True, slots=True)
class EntityDelete:
    """Delete entity ``key``, leaving a tombstone at ``version``."""

    entity: str
    key: str
    version: Version
    origin: Origin | None = None
    echo_token: int = 0


EntityOp = EntityUpsert | EntityDelete


class MapContext(Protocol):
    """What a mapper may ask while mapping one event."""

    @property
    def integration(self) -> str:
        """The integration this mapper runs for."""
        ...

    def external_id(self, integration: str, entity: str, key: object) -> str:
        """The id ``integration``'s target gave entity ``key``; raises ``RelationPending``."""
        ...


Mapper = Callable[[TableEvent, MapContext], Iterable[EntityOp]]
