"""Inbound mapping: an external system's entity change -> the columns of one table row.

The reverse of the outbound mappers. An ``InboundChange`` is what the inbound endpoint
accepted and queued: the integration, entity and external id from the URL, the operation,
the body validated by the integration's pydantic model (as JSON-ready fields), the change's
own version (``version_us``: the body's version field as microseconds, or a counter) and the
request's ``Idempotency-Key``. It is serialised to JSON on the inbound topic.

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
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise MappingError(f"not an inbound change ({type(exc).__name__}: {exc})") from None
        if change.op not in ("upsert", "delete"):
            raise MappingError(f"inbound change: unknown op {change.op!r}")
        return change

    @property
    def partition_key(self) -> bytes:
        """Changes of one external entity share a partition, so they apply in order."""
        return f"{self.entity}/{self.external_id}".encode()


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
