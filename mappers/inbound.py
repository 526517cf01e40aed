"""Inbound mapping: an external system's entity change -> the columns of one table row.

The reverse of the outbound mappers. An ``InboundChange`` is what the inbound endpoint
accepted and queued: the integration, entity and external id from the URL, the operation,
the body validated by the integration's pydantic model (as JSON-ready fields), the change's
own version (``version_us``: the body's version field as microseconds, or a counter), the
request's ``Idempotency-Key`` and, when the sender gave it, the version of ours it held
when it made the change (``base_version``, see ``mappers.lww``). It is serialised to JSON
on the inbound topic.

An ``InboundMapper`` is ``(model instance) -> {column: value}``: the columns of the table row
to write, without the key column (found through the identity map, or assigned by the
database on create) and without the version column (written by the apply step from the
change's version field).

Invariants: values are frozen; ``InboundChange.from_json(change.to_json()) == change``;
mappers are pure functions of the model (they may be called again on a redelivery).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

from pydantic import BaseModel

from cdc.core.errors import ConfigError, MappingError
from mappers.references import load_callable

__all__ = ["InboundChange", "InboundMapper", "Op", "load_inbound_mapper", "load_inbound_model"]

InboundMapper = Callable[[BaseModel], Mapping[str, Any]]

Op = Literal["upsert", "delete"]


@dataclass(frozen=True, slots=True)
class InboundChange:
    """One accepted external change, as queued on the integration's inbound topic."""

    integration: str
    entity: str
    external_id: str
    op: Op
    version_us: int
    idempotency_key: str
    received_at_us: int
    # The validated body (JSON-ready); for a delete, what the body held, if anything.
    fields: dict[str, Any] = field(default_factory=dict)
    # Hex of the last version of ours the external system held when it made the change
    # (``X-Cdcsync-Base-Version``; "" for none yet); None when it did not say.
    base_version: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> InboundChange:
        try:
            raw = json.loads(data)
            change = cls(
                integration=str(raw["integration"]),
                entity=str(raw["entity"]),
                external_id=str(raw["external_id"]),
                op=cast(Op, raw["op"]),
                version_us=int(raw["version_us"]),
                idempotency_key=str(raw["idempotency_key"]),
                received_at_us=int(raw["received_at_us"]),
                fields=dict(raw.get("fields") or {}),
                base_version=_base_version(raw.get("base_version")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MappingError(f"not an inbound change ({type(exc).__name__}: {exc})") from None
        if change.op not in ("upsert", "delete"):
            raise MappingError(f"inbound change: unknown op {change.op!r}")
        return change

    @property
    def base(self) -> bytes | None:
        """``base_version`` as bytes (``mappers.lww.echo_token``'s argument)."""
        return None if self.base_version is None else bytes.fromhex(self.base_version)

    @property
    def partition_key(self) -> bytes:
        """Changes of one external entity share a partition, so they apply in order."""
        return f"{self.entity}/{self.external_id}".encode()


def _base_version(raw: object) -> str | None:
    if raw is None:
        return None
    text = str(raw)
    bytes.fromhex(text)  # a ValueError: not an inbound change
    return text


def load_inbound_model(ref: str) -> type[BaseModel]:
    """The pydantic model class ``ref`` names; ``ConfigError`` when it is not one."""
    target = load_callable(ref)
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise ConfigError(f"{ref}: not a pydantic model class")
    return target


def load_inbound_mapper(ref: str) -> InboundMapper:
    target = load_callable(ref)
    if not callable(target):
        raise ConfigError(f"{ref}: not callable")
    return cast(InboundMapper, target)
