"""Everything needed to encode one table's changes: encoder, registered schemas, writer.

Invariant: ``key`` and ``value`` were registered before any event written with them;
a new Relation message replaces the whole ``TableEncoding`` of its table.
"""

from __future__ import annotations

from dataclasses import dataclass

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
