"""Everything needed to encode one table's changes: encoder, registered schemas, writer.

Invariants: ``key`` and ``value`` were registered before any event written with them;
a new Relation message replaces the whole ``TableEncoding`` of its table; ``key_header``
is set only when the registered key schema is exactly the encoder's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cdc.capture.encoding.envelope import RelationEncoder
from cdc.capture.encoding.envelope_writer import EnvelopeWriter
from schema_registry.serde import PreparedSchema

__all__ = ["TableEncoding"]


@dataclass
class TableEncoding:
    """One captured table's encoder, its key and value schemas, and its envelope writer."""

    encoder: RelationEncoder
    key: PreparedSchema | None
    value: PreparedSchema
    writer: EnvelopeWriter
    # The key's framing when the writer's generated key writer writes the registered key
    # schema itself (not another version of it): then keys skip the record dict.
    key_header: bytes | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        key, schema = self.key, self.encoder.key_schema
        if key is not None and schema is not None and self.writer.writes_keys:
            self.key_header = key.header if json.loads(key.schema) == schema else None
