"""Events: ``Change`` values and the Debezium-compatible Avro envelope they become.

For a relation ``schema.table`` under topic prefix ``P`` this module derives:

- the topic ``P.schema.table``;
- the key schema ``P.schema.table.Key``: the replica-identity key columns
  (``None`` when the relation has none: events are then unkeyed);
- the value schema ``P.schema.table.Envelope`` as Debezium 3.x writes it through
  Confluent's AvroConverter: ``before``/``after`` (``P.schema.table.Value`` rows),
  ``source`` (``io.debezium.connector.postgresql.Source``), ``transaction``
  (``event.block``), ``op``, ``ts_ms``, ``ts_us``, ``ts_ns``, in that order, with
  Debezium's ``connect.*`` properties; plus two additive fields that
  ``additive_fields=False`` leaves out: ``source.commit_lsn`` and
  ``unavailable_columns`` (the row fields, by their Avro names, whose value was an
  unchanged TOAST value and is NOT in the row: their placeholder must never be written).

Invariants:
- Columns of a type Debezium leaves out (``ColumnCodec.debezium_skips``) are in the
  row only with ``additive_fields``; without them, a type whose every value Debezium
  writes as one constant (``ColumnCodec.debezium_constant``) is written as that.
- Key columns and NOT NULL columns (``ColumnFacts``, read from the catalog) are
  required; a column's constant default is in its schema (``default`` and
  ``connect.default``) as Debezium puts it; every other column is optional.
- A key-only before-image (a delete under REPLICA IDENTITY DEFAULT) carries the
  column defaults where the tuple has no value, as Debezium's does.
- ``source.commit_lsn`` plus ``transaction.total_order`` (1-based position in
  the transaction) identify an event: a re-sent transaction re-produces the
  same pair, so duplicates are recognisable downstream.
- Avro names are sanitised (invalid characters become ``_``); the original
  column name is kept in the field's ``__cdcsync_column`` attribute
  only when it differs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from cdc import __version__
from cdc.capture.encoding import pg_text as tp
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


def sequence_text(last_commit_lsn: Lsn | int | None, lsn: int) -> str:
    """Debezium's ``source.sequence``: ``["<last commit LSN>","<event LSN>"]``."""
    last = "null" if last_commit_lsn is None else f'"{int(last_commit_lsn)}"'
    return f'[{last},"{lsn}"]'


@dataclass(frozen=True, slots=True)
class TxContext:
    """What every event of one transaction shares.

    ``last_commit_lsn``: the end of the previous transaction this session saw (Debezium's
    ``lsn_commit``, the first element of ``source.sequence``); None for the first one.
    ``origin``, ``origin_lsn``: the replication origin the transaction was written under
    (pgoutput's Origin message), Debezium's ``source.origin`` and ``source.origin_lsn``.
    """

    xid: int
    commit_lsn: Lsn
    commit_ts_us: int
    last_commit_lsn: Lsn | None = None
    origin: str | None = None
    origin_lsn: int | None = None


@dataclass(frozen=True, slots=True)
class ColumnFacts:
    """What pgoutput does not say about a column: NOT NULL, and its constant default as
    PostgreSQL prints the value (None when it has none, or a non-constant one)."""

    not_null: bool = False
    default_text: str | None = None


# One row per column of a table: name, NOT NULL, the default expression as deparsed.
COLUMN_FACTS_SQL = """
SELECT a.attname::text, a.attnotnull, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
   AND a.attgenerated = ''
"""

_QUOTED_CONSTANT = re.compile(r"'((?:[^']|'')*)'(?:::[A-Za-z_][\w .\"\[\]()]*)?")
_BARE_CONSTANT = re.compile(r"-?\d+(?:\.\d+)?|true|false")


def constant_default(expression: str | None) -> str | None:
    """The text form of a default that is a constant (``'x'::text``, ``7``, ``1.5``), else
    None (``nextval(...)``, ``now()`` and other expressions have no value in the schema)."""
    if expression is None:
        return None
    match = _QUOTED_CONSTANT.fullmatch(expression)
    if match is not None:
        return match.group(1).replace("''", "'")
    if _BARE_CONSTANT.fullmatch(expression):
        return expression
    return None


def column_facts_from_rows(rows: list[tuple[Any, ...]]) -> dict[str, ColumnFacts]:
    """COLUMN_FACTS_SQL's rows by column name."""
    return {
        str(name): ColumnFacts(bool(not_null), constant_default(expr))
        for name, not_null, expr in rows
    }


@dataclass(slots=True)  # not frozen: built once per change, and frozen costs 2x
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


def source_schema(*, additive_fields: bool = True) -> dict[str, Any]:
    """Debezium's PostgreSQL ``source`` block, plus ``commit_lsn`` when additive."""
    opt_long: list[Any] = ["null", "long"]
    extra = [{"name": "commit_lsn", "type": opt_long, "default": None}] if additive_fields else []
    return {
        "type": "record",
        "name": "Source",
        "namespace": "io.debezium.connector.postgresql",
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
            {"name": "ts_ns", "type": opt_long, "default": None},
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "txId", "type": opt_long, "default": None},
            {"name": "lsn", "type": opt_long, "default": None},
            {"name": "xmin", "type": opt_long, "default": None},
            {"name": "origin", "type": ["null", "string"], "default": None},
            {"name": "origin_lsn", "type": opt_long, "default": None},
            *extra,
        ],
        "connect.version": 1,
        "connect.name": "io.debezium.connector.postgresql.Source",
    }


def transaction_schema() -> dict[str, Any]:
    return {
        "type": "record",
        "name": "block",
        "namespace": "event",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"},
        ],
        "connect.version": 1,
        "connect.name": "event.block",
    }


def _json_default(value: Any, avro_type: Any) -> Any:
    """A decoded value as an Avro schema default (JSON), or None when it has no such form."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, Decimal) and isinstance(avro_type, dict):
        unscaled = int(value.scaleb(int(avro_type.get("scale", 0))).to_integral_value())
        return tp.twos_complement_bytes(unscaled).decode("latin-1")
    return None


def _zero(avro_type: Any, placeholder: Any) -> Any:
    """Debezium's fallback for a required column without a value: a zero of its type."""
    base = avro_type if isinstance(avro_type, str) else avro_type.get("type")
    zeros: dict[str, Any] = {"string": "", "bytes": b"", "array": [], "map": {}}
    if base in zeros:
        return zeros[base]
    if base == "record" and "scale" in str(avro_type):
        return {"scale": 0, "value": b"\x00"}
    return placeholder  # numbers and booleans: 0, 0.0, False; Point: the origin


def _with_connect_default(avro_type: Any, default: Any) -> Any:
    """Confluent's AvroData puts a Connect default beside the type as ``connect.default``."""
    if isinstance(avro_type, str):
        return {"type": avro_type, "connect.default": default}
    if avro_type.get("type") in ("record", "array", "map"):
        return avro_type
    return {**avro_type, "connect.default": default}


_NO_DEFAULT: Final[Any] = object()


def _constant(value: Any, _text: str) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class _Field:
    index: int
    name: str
    column: str
    decode: Any
    placeholder: Any
    default: Any  # the decoded default, or _NO_DEFAULT
    required: bool
    # What a required column holds when its value is null (a numeric NaN written as
    # null) or missing from a key-only before-image: its default, else a typed zero.
    filler: Any


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
        columns: Mapping[str, ColumnFacts] | None = None,
        additive_fields: bool = True,
        transaction_block: bool = True,
    ) -> None:
        """``key_columns`` overrides the Relation's key flags (REPLICA IDENTITY FULL flags
        every column; the event key must still be the primary key). ``columns``: NOT NULL
        and defaults from the catalog (without them, only key columns are required).
        ``transaction_block``: fill ``transaction`` (Debezium does only with
        provide.transaction.metadata; cdcsync's event identity needs its total_order)."""
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
        facts = columns or {}
        for i, (col, codec) in enumerate(zip(relation.columns, codecs, strict=True)):
            if codec.debezium_skips and not additive_fields and not is_key_flags[i]:
                continue  # a type Debezium leaves out of its events
            value_type = value_types[i]
            name = avro_name(col.name)
            while name in seen:
                name += "_"
            seen.add(name)
            fact = facts.get(col.name, ColumnFacts())
            required = is_key_flags[i] or fact.not_null
            default = _NO_DEFAULT
            if fact.default_text is not None:
                try:
                    decoded = codec.decode(fact.default_text)
                except DecodeError:
                    decoded = None
                json_default = _json_default(decoded, codec.avro_type)
                if json_default is not None:
                    default = decoded
                    value_type = _with_connect_default(value_type, json_default)
            filler = default if default is not _NO_DEFAULT else None
            if filler is None and required:
                filler = _zero(codec.avro_type, codec.unavailable)
            # An array without a typed placeholder is null, as Debezium writes it (a
            # required one takes its filler).
            placeholder = filler if codec.unavailable is None else codec.unavailable
            decode = codec.decode
            constant = codec.debezium_constant
            if constant is not None and not additive_fields and not is_key_flags[i]:
                decode = functools.partial(_constant, constant[0])  # Debezium loses the value
            field = _Field(i, name, col.name, decode, placeholder, default, required, filler)
            fields.append(field)
            entry: dict[str, Any] = {"name": name}
            if name != col.name:
                entry["__cdcsync_column"] = col.name
            json_value = None if default is _NO_DEFAULT else _json_default(default, codec.avro_type)
            if is_key_flags[i]:
                key_idx.append(field)
                key_type = next(key_types)
                if json_value is not None:
                    key_type = _with_connect_default(key_type, json_value)
                    key_fields.append({**entry, "type": key_type, "default": json_value})
                else:
                    key_fields.append({**entry, "type": key_type})
            if required:
                if json_value is not None:
                    value_fields.append({**entry, "type": value_type, "default": json_value})
                else:
                    value_fields.append({**entry, "type": value_type})
            elif json_value is not None:
                value_fields.append({**entry, "type": [value_type, "null"], "default": json_value})
            else:
                value_fields.append({**entry, "type": ["null", value_type], "default": None})
        self._fields = tuple(fields)
        self._key_fields = tuple(key_idx)
        self.additive_fields = additive_fields
        self.transaction_block = transaction_block
        self.value_row_schema: dict[str, Any] = {
            "type": "record",
            "name": "Value",
            "namespace": namespace,
            "fields": value_fields,
            "connect.name": f"{namespace}.Value",
        }
        self.key_schema: dict[str, Any] | None = None
        if key_fields:
            self.key_schema = {
                "type": "record",
                "name": "Key",
                "namespace": namespace,
                "fields": key_fields,
                "connect.name": f"{namespace}.Key",
            }
        # Inside the envelope the row record inherits the envelope's namespace.
        nested_row = {k: v for k, v in self.value_row_schema.items() if k != "namespace"}
        opt_long: list[Any] = ["null", "long"]
        envelope_fields: list[dict[str, Any]] = [
            {"name": "before", "type": ["null", nested_row], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "source", "type": source_schema(additive_fields=additive_fields)},
            {"name": "transaction", "type": ["null", transaction_schema()], "default": None},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": opt_long, "default": None},
            {"name": "ts_us", "type": opt_long, "default": None},
            {"name": "ts_ns", "type": opt_long, "default": None},
        ]
        if additive_fields:
            envelope_fields.append(
                {
                    "name": "unavailable_columns",
                    "type": ["null", {"type": "array", "items": "string"}],
                    "default": None,
                }
            )
        self.value_schema: dict[str, Any] = {
            "type": "record",
            "name": "Envelope",
            "namespace": namespace,
            "fields": envelope_fields,
            "connect.version": 2,
            "connect.name": f"{namespace}.Envelope",
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
            "origin": None,
            "origin_lsn": None,
        }

    @property
    def data_collection(self) -> str:
        """Debezium's name of the table: ``schema.table``."""
        return f"{self.relation.namespace}.{self.relation.name}"

    @property
    def has_key(self) -> bool:
        return self.key_schema is not None

    @property
    def fields(self) -> tuple[_Field, ...]:
        """The value row's fields, in schema order."""
        return self._fields

    @property
    def key_fields(self) -> tuple[_Field, ...]:
        """The key record's fields, in schema order."""
        return self._key_fields

    @staticmethod
    def has_default(field: _Field) -> bool:
        """Whether ``field`` has a constant default (what a key-only image carries)."""
        return field.default is not _NO_DEFAULT

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

    def row_record(
        self,
        values: TupleValues,
        *,
        unavailable: list[str] | None,
        old: TupleValues | None = None,
        key_only: bool = False,
    ) -> dict[str, Any]:
        """A ``Value`` row; unchanged TOAST columns get a placeholder and are listed.

        ``old``: the full old tuple (REPLICA IDENTITY FULL), whose value an unchanged
        TOAST column takes instead of the placeholder, as Debezium does. ``key_only``:
        ``values`` is a key-only before-image; its missing columns take their defaults.
        """
        if len(values) != len(self.relation.columns):
            raise DecodeError(
                f"{self.relation.namespace}.{self.relation.name}: tuple has {len(values)} "
                f"columns, relation has {len(self.relation.columns)}"
            )
        out: dict[str, Any] = {}
        for f in self._fields:
            v = values[f.index]
            if v is UNCHANGED and old is not None:
                prior = old[f.index]
                if prior is not UNCHANGED:
                    v = prior
            if v is None:
                if key_only and f.default is not _NO_DEFAULT:
                    out[f.name] = f.default
                else:
                    out[f.name] = f.filler
                continue
            if v.__class__ is str:
                value = f.decode(v)
            elif v is UNCHANGED:
                out[f.name] = f.placeholder
                if unavailable is not None:
                    unavailable.append(f.name)  # the field name, as rows are keyed
                continue
            else:
                value = f.decode(bytes(v).decode())  # type: ignore[arg-type]
            # A value Debezium writes as null (numeric NaN): a required column's filler.
            out[f.name] = f.filler if value is None else value
        return out

    def rows(self, change: Change, unavailable: list[str]) -> tuple[Any, Any]:
        """The before and after rows of ``change`` (None where it has none)."""
        before = None
        if change.before is not None:
            before = self.row_record(change.before, unavailable=None, key_only=change.before_is_key)
        after = None
        if change.after is not None:
            old = None if change.before is None or change.before_is_key else change.before
            after = self.row_record(change.after, unavailable=unavailable, old=old)
        return before, after

    def envelope(self, change: Change, *, table_seq: int, now_ms: int) -> dict[str, Any]:
        """The value record of ``change``."""
        unavailable: list[str] = []
        before, after = self.rows(change, unavailable)
        tx = change.tx
        commit_lsn = int(tx.commit_lsn)
        lsn = int(change.lsn)
        source = dict(self._source_base)
        source["ts_ms"] = tx.commit_ts_us // 1000
        source["ts_us"] = tx.commit_ts_us
        source["ts_ns"] = tx.commit_ts_us * 1000
        source["sequence"] = sequence_text(tx.last_commit_lsn, lsn)
        source["txId"] = tx.xid
        source["lsn"] = lsn
        source["origin"] = tx.origin
        source["origin_lsn"] = tx.origin_lsn
        if self.additive_fields:
            source["commit_lsn"] = commit_lsn
        envelope = {
            "before": before,
            "after": after,
            "source": source,
            "transaction": {
                "id": f"{tx.xid}:{lsn}",
                "total_order": change.seq,
                "data_collection_order": table_seq,
            }
            if self.transaction_block
            else None,
            "op": change.op,
            "ts_ms": now_ms,
            "ts_us": now_ms * 1000,
            "ts_ns": now_ms * 1_000_000,
        }
        if self.additive_fields:
            envelope["unavailable_columns"] = unavailable or None
        return envelope

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
