"""Events: ``Change`` values and the Debezium-compatible Avro envelope they become.

For a relation ``schema.table`` under topic prefix ``P`` this module derives:

- the topic ``P.schema.table``;
- the key schema ``P.schema.table.Key``: the replica-identity key columns
  (``None`` when the relation has none: events are then unkeyed);
- the value schema ``P.schema.table.Envelope`` with Debezium's fields
  ``before``/``after`` (``P.schema.table.Value`` rows), ``source``
  (``io.debezium.connector.postgresql.Source``), ``op``, ``ts_ms``,
  ``transaction`` (``event.block``), plus two additive fields: ``ts_us`` and
  ``unavailable_columns`` (the row fields, by their Avro names, whose value was an
  unchanged TOAST value and is NOT in the row: their placeholder must never be written).

Invariants:
- Key columns are required; every other column is optional (pgoutput does
  not carry NOT NULL, and optional columns keep schema changes compatible).
- ``source.commit_lsn`` plus ``transaction.total_order`` (1-based position in
  the transaction) identify an event: a re-sent transaction re-produces the
  same pair, so duplicates are recognisable downstream.
- Avro names are sanitised (invalid characters become ``_``); the original
  column name is kept in the field's ``__cdcsync_column`` attribute
  only when it differs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cdc import __version__
from cdc.capture.encoding.type_mapping import (
    ColumnCodec,
    PgType,
    TypeOptions,
    codec_for,
    share_named_types,
)
from cdc.capture.pgoutput import UNCHANGED, Delete, Insert, Relation, TupleValues, Update
from cdc.core.errors import DecodeError
from cdc.core.lsn import Lsn

_INVALID: Final = re.compile(r"[^A-Za-z0-9_]")

OP_CREATE: Final = "c"
OP_UPDATE: Final = "u"
OP_DELETE: Final = "d"
OP_READ: Final = "r"
OP_TRUNCATE: Final = "t"


def avro_name(name: str) -> str:
    """A valid Avro name for ``name`` (invalid characters to ``_``, no leading digit)."""
    clean = _INVALID.sub("_", name)
    if not clean or clean[0].isdigit():
        clean = "_" + clean
    return clean


def avro_namespace(*parts: str) -> str:
    return ".".join(avro_name(p) for p in parts)


def topic_for(prefix: str, namespace: str, table: str) -> str:
    return f"{prefix}.{namespace}.{table}"


@dataclass(frozen=True, slots=True)
class TxContext:
    """What every event of one transaction shares."""

    xid: int
    commit_lsn: Lsn
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Change:
    """One row change (or a truncate) inside a committed transaction."""

    op: str
    relation_oid: int
    lsn: Lsn
    seq: int
    tx: TxContext
    before: TupleValues | None
    after: TupleValues | None
    before_is_key: bool = False

    @classmethod
    def from_insert(cls, msg: Insert, *, lsn: Lsn, seq: int, tx: TxContext) -> Change:
        return cls(OP_CREATE, msg.relation_oid, lsn, seq, tx, None, msg.new)

    @classmethod
    def from_update(cls, msg: Update, *, lsn: Lsn, seq: int, tx: TxContext) -> Change:
        return cls(OP_UPDATE, msg.relation_oid, lsn, seq, tx, msg.old, msg.new, msg.old_is_key)

    @classmethod
    def from_delete(cls, msg: Delete, *, lsn: Lsn, seq: int, tx: TxContext) -> Change:
        return cls(OP_DELETE, msg.relation_oid, lsn, seq, tx, msg.old, None, msg.old_is_key)

    @classmethod
    def truncate(cls, relation_oid: int, *, lsn: Lsn, seq: int, tx: TxContext) -> Change:
        return cls(OP_TRUNCATE, relation_oid, lsn, seq, tx, None, None)


def source_schema() -> dict[str, Any]:
    """Debezium's PostgreSQL ``source`` block, plus ``commit_lsn``."""
    opt_long: list[Any] = ["null", "long"]
    return {
        "type": "record",
        "name": "Source",
        "namespace": "io.debezium.connector.postgresql",
        "connect.name": "io.debezium.connector.postgresql.Source",
        "fields": [
            {"name": "version", "type": "string"},
            {"name": "connector", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {
                "name": "snapshot",
                "type": [
                    {
                        "type": "string",
                        "connect.version": 1,
                        "connect.parameters": {
                            "allowed": "true,first,first_in_data_collection,"
                            "last_in_data_collection,last,false,incremental"
                        },
                        "connect.default": "false",
                        "connect.name": "io.debezium.data.Enum",
                    },
                    "null",
                ],
                "default": "false",
            },
            {"name": "db", "type": "string"},
            {"name": "sequence", "type": ["null", "string"], "default": None},
            {"name": "ts_us", "type": opt_long, "default": None},
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "txId", "type": opt_long, "default": None},
            {"name": "lsn", "type": opt_long, "default": None},
            {"name": "xmin", "type": opt_long, "default": None},
            {"name": "commit_lsn", "type": opt_long, "default": None},
        ],
    }


def transaction_schema() -> dict[str, Any]:
    return {
        "type": "record",
        "name": "block",
        "namespace": "event",
        "connect.version": 1,
        "connect.name": "event.block",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"},
        ],
    }


@dataclass(frozen=True, slots=True)
class _Field:
    index: int
    name: str
    column: str
    decode: Any
    placeholder: Any


class RelationEncoder:
    """Schemas and record builders for one version of one relation."""

    def __init__(
        self,
        relation: Relation,
        *,
        prefix: str,
        database: str,
        types: Mapping[int, PgType],
        options: TypeOptions,
        key_columns: tuple[str, ...] | None = None,
    ) -> None:
        """``key_columns`` overrides the Relation's key flags (REPLICA IDENTITY FULL flags
        every column; the event key must still be the primary key)."""
        self.relation = relation
        self.prefix = prefix
        self.database = database
        self.topic = topic_for(prefix, relation.namespace, relation.name)
        namespace = avro_namespace(prefix, relation.namespace, relation.name)
        self.namespace = namespace
        codecs: list[ColumnCodec] = [
            codec_for(col.type_oid, col.type_modifier, types=types, options=options)
            for col in relation.columns
        ]
        self.codecs = tuple(codecs)
        is_key_flags = [
            col.is_key if key_columns is None else col.name in key_columns
            for col in relation.columns
        ]
        # A named type (e.g. VariableScaleDecimal) may be defined only once per schema.
        value_types = share_named_types([c.avro_type for c in codecs])
        key_types = iter(
            share_named_types([c.avro_type for c, k in zip(codecs, is_key_flags, strict=True) if k])
        )
        value_fields: list[dict[str, Any]] = []
        key_fields: list[dict[str, Any]] = []
        fields: list[_Field] = []
        key_idx: list[_Field] = []
        seen: set[str] = set()
        for i, (col, codec) in enumerate(zip(relation.columns, codecs, strict=True)):
            value_type = value_types[i]
            name = avro_name(col.name)
            while name in seen:
                name += "_"
            seen.add(name)
            field = _Field(i, name, col.name, codec.decode, codec.unavailable)
            fields.append(field)
            entry: dict[str, Any] = {"name": name}
            if name != col.name:
                entry["__cdcsync_column"] = col.name
            if is_key_flags[i]:
                key_idx.append(field)
                key_fields.append({**entry, "type": next(key_types)})
                value_fields.append({**entry, "type": value_type})
            else:
                value_fields.append({**entry, "type": ["null", value_type], "default": None})
        self._fields = tuple(fields)
        self._key_fields = tuple(key_idx)
        self.value_row_schema: dict[str, Any] = {
            "type": "record",
            "name": "Value",
            "namespace": namespace,
            "connect.name": f"{namespace}.Value",
            "fields": value_fields,
        }
        self.key_schema: dict[str, Any] | None = None
        if key_fields:
            self.key_schema = {
                "type": "record",
                "name": "Key",
                "namespace": namespace,
                "connect.name": f"{namespace}.Key",
                "fields": key_fields,
            }
        self.value_schema: dict[str, Any] = {
            "type": "record",
            "name": "Envelope",
            "namespace": namespace,
            "connect.version": 1,
            "connect.name": f"{namespace}.Envelope",
            "fields": [
                {"name": "before", "type": ["null", self.value_row_schema], "default": None},
                {"name": "after", "type": ["null", f"{namespace}.Value"], "default": None},
                {"name": "source", "type": source_schema()},
                {"name": "op", "type": "string"},
                {"name": "ts_ms", "type": ["null", "long"], "default": None},
                {"name": "ts_us", "type": ["null", "long"], "default": None},
                {"name": "transaction", "type": ["null", transaction_schema()], "default": None},
                {
                    "name": "unavailable_columns",
                    "type": ["null", {"type": "array", "items": "string"}],
                    "default": None,
                },
            ],
        }
        self._source_base: dict[str, Any] = {
            "version": __version__,
            "connector": "postgresql",
            "name": prefix,
            "snapshot": "false",
            "db": database,
            "schema": relation.namespace,
            "table": relation.name,
            "xmin": None,
        }

    @property
    def has_key(self) -> bool:
        return self.key_schema is not None

    def key_record(self, values: TupleValues) -> dict[str, Any]:
        """The key record from a tuple (new row, or the old key/row of a delete)."""
        out: dict[str, Any] = {}
        for f in self._key_fields:
            v = values[f.index]
            if v is None or v is UNCHANGED:
                raise DecodeError(
                    f"{self.relation.namespace}.{self.relation.name}: key column "
                    f"{f.column!r} has no value"
                )
            out[f.name] = f.decode(v if isinstance(v, str) else bytes(v).decode())  # type: ignore[arg-type]
        return out

    def row_record(self, values: TupleValues, *, unavailable: list[str] | None) -> dict[str, Any]:
        """A ``Value`` row; unchanged TOAST columns get a placeholder and are listed."""
        if len(values) != len(self._fields):
            raise DecodeError(
                f"{self.relation.namespace}.{self.relation.name}: tuple has {len(values)} "
                f"columns, relation has {len(self._fields)}"
            )
        out: dict[str, Any] = {}
        for f in self._fields:
            v = values[f.index]
            if v is None:
                out[f.name] = None
            elif v.__class__ is str:
                out[f.name] = f.decode(v)
            elif v is UNCHANGED:
                out[f.name] = f.placeholder
                if unavailable is not None:
                    unavailable.append(f.name)  # the field name, as rows are keyed
            else:
                out[f.name] = f.decode(bytes(v).decode())  # type: ignore[arg-type]
        return out

    def envelope(self, change: Change, *, table_seq: int, now_ms: int) -> dict[str, Any]:
        """The value record of ``change``."""
        unavailable: list[str] = []
        before = None
        if change.before is not None:
            before = self.row_record(change.before, unavailable=None)
        after = None
        if change.after is not None:
            after = self.row_record(change.after, unavailable=unavailable)
        tx = change.tx
        commit_lsn = int(tx.commit_lsn)
        source = dict(self._source_base)
        source["ts_ms"] = tx.commit_ts_us // 1000
        source["ts_us"] = tx.commit_ts_us
        source["sequence"] = f'["{commit_lsn}","{int(change.lsn)}"]'
        source["txId"] = tx.xid
        source["lsn"] = int(change.lsn)
        source["commit_lsn"] = commit_lsn
        return {
            "before": before,
            "after": after,
            "source": source,
            "op": change.op,
            "ts_ms": now_ms,
            "ts_us": now_ms * 1000,
            "transaction": {
                "id": f"{tx.xid}:{commit_lsn}",
                "total_order": change.seq,
                "data_collection_order": table_seq,
            },
            "unavailable_columns": unavailable or None,
        }

    def key_for(self, change: Change) -> dict[str, Any] | None:
        if self.key_schema is None:
            return None
        if change.after is not None:
            return self.key_record(change.after)
        if change.before is not None:
            return self.key_record(change.before)
        return None

    def column_diff(self, other: Relation) -> str:
        """Words describing how ``other`` differs from this relation's columns."""
        old = {c.name: c for c in self.relation.columns}
        new = {c.name: c for c in other.columns}
        parts = [f"added {n!r}" for n in new if n not in old]
        parts += [f"dropped {n!r}" for n in old if n not in new]
        parts += [
            f"changed type of {n!r}"
            for n in new
            if n in old
            and (new[n].type_oid, new[n].type_modifier) != (old[n].type_oid, old[n].type_modifier)
        ]
        return ", ".join(parts) or "no column changes"
