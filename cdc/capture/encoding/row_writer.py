"""Generated per-relation Avro writers: a pgoutput tuple straight to row and key bytes.

The generic path builds a ``{field: value}`` dict per row (``RelationEncoder.row_record``)
and hands it to fastavro, which walks the schema and resolves every union branch by
looking at the datum: most of capture's CPU per change. A relation's shape is fixed
until its next Relation message, so ``RowWriter`` compiles, once per relation, a Python
function that reads each column of the tuple, decodes it with the column's codec and
appends its Avro bytes, with the union branch bytes, fillers, defaults and TOAST
placeholders precomputed per field.

Invariants:

- ``RowWriter.row(values, old, unavailable, key_only)`` returns exactly the bytes fastavro
  writes for ``encoder.row_record(values, unavailable=..., old=old, key_only=key_only)``
  under ``encoder.value_row_schema``, appends the same names to ``unavailable``, and raises
  the same ``DecodeError`` for a bad value; ``RowWriter.key(values)`` returns exactly the
  bytes of ``encoder.key_record(values)`` under ``encoder.key_schema`` (the unit tests
  compare both with the reference on generated tuples of every type).
- A relation with a field whose Avro type is not a primitive (records, arrays, maps,
  enums, fixed) or carries a logical type other than ``decimal`` gets no generated writer
  (``RowWriter.build`` returns None) and keeps the fastavro path: nothing is guessed.
- Values are parsed by the codecs' bare parsers (``decode.__wrapped__``), text columns
  are copied as they are and fixed-scale decimals are read from their digits; if anything
  in a row raises, the row is written again by a twin compiled with the checked
  decoders, so errors are exactly the codecs' own.
- Generated code only ever holds constants and the codecs' own decode functions; no
  identifier or value from the database is spliced into the source.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from cdc.capture.encoding.envelope import RelationEncoder
from cdc.capture.encoding.type_mapping import keep_text, parses_decimal_text
from cdc.capture.pgoutput import UNCHANGED, TupleValues
from cdc.core.errors import DecodeError

__all__ = ["RowWriter", "long_bytes", "string_bytes"]

_SMALL: Final = tuple(bytes([(n << 1) & 0xFF]) for n in range(64))
_PRIMITIVES: Final = frozenset({"boolean", "int", "long", "float", "double", "string", "bytes"})
_NULL_TYPE: Final = "null"


def long_bytes(n: int) -> bytes:
    """Avro ``int``/``long``: zigzag, then base-128 varint (unrolled up to four bytes)."""
    if 0 <= n < 64:
        return _SMALL[n]
    z = (n << 1) ^ (n >> 63)
    if z < 0x4000:
        if z < 0x80:
            return _SMALL[z >> 1] if not z & 1 else bytes((z,))
        return bytes(((z & 0x7F) | 0x80, z >> 7))
    if z < 0x10000000:
        if z < 0x200000:
            return bytes(((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80, z >> 14))
        return bytes(
            ((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80, ((z >> 14) & 0x7F) | 0x80, z >> 21)
        )
    if z >> 64:
        raise ValueError(f"{n} does not fit an Avro long")
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def string_bytes(value: str) -> bytes:
    """Avro ``string``: the UTF-8 bytes behind their length."""
    data = value.encode()
    return long_bytes(len(data)) + data


def _bytes(value: bytes) -> bytes:
    return long_bytes(len(value)) + bytes(value)


def _boolean(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack


def _unscaled_bytes(unscaled: int, magnitude: int) -> bytes:
    """A decimal's unscaled value as Avro ``bytes``, sized from its magnitude as fastavro
    sizes it (so -128 takes two bytes)."""
    size = (magnitude.bit_length() + 8) // 8
    return long_bytes(size) + unscaled.to_bytes(size, "big", signed=True)


def _decimal_writer(precision: int, scale: int) -> Callable[[Any], bytes]:
    """Avro ``bytes``/``decimal``: the unscaled value, big-endian two's complement.

    As fastavro writes it: the byte count is taken from the magnitude (so -128 takes two
    bytes), more digits than ``precision`` or a finer scale than the schema's is refused.
    """

    def write(value: Decimal | bytes) -> bytes:
        if not isinstance(value, Decimal):
            return _bytes(bytes(value))
        sign, digits, exp = value.as_tuple()
        if len(digits) > precision:
            raise ValueError("The decimal precision is bigger than allowed by schema")
        if not isinstance(exp, int) or exp + scale < 0:
            raise ValueError("Scale provided in schema does not match the decimal")
        numerator, denominator = value.copy_abs().as_integer_ratio()  # abs() would round
        magnitude: int = numerator * 10**scale // denominator
        return _unscaled_bytes(-magnitude if sign else magnitude, magnitude)

    return write


def _decimal_text_writer(precision: int, scale: int) -> Callable[[str], bytes | None]:
    """A decimal's bytes straight from PostgreSQL's text of it, or None when the text is
    not plain digits with exactly ``scale`` fraction digits (``NaN``, ``$1.00``, too many
    digits): then the codec decodes it and ``_decimal_writer`` writes it.

    Equal to ``_decimal_writer`` on ``Decimal(text)``: with ``scale`` fraction digits the
    Decimal's coefficient is the text's digits and its exponent ``-scale``.
    """
    limit = 10**precision

    def write(text: str) -> bytes | None:
        point = text.find(".")
        if point < 0:
            if scale:
                return None
            digits = text
        elif len(text) - point - 1 != scale:
            return None
        else:
            digits = text[:point] + text[point + 1 :]
        body = digits[1:] if digits[:1] == "-" else digits
        if not (body.isascii() and body.isdigit()):
            return None
        unscaled = int(digits)
        magnitude = -unscaled if unscaled < 0 else unscaled
        if magnitude >= limit:
            return None  # the decoder's path refuses it with fastavro's words
        return _unscaled_bytes(unscaled, magnitude)

    return write


def _decimal_params(avro_type: Any) -> tuple[int, int] | None:
    """(precision, scale) of a ``bytes``/``decimal`` type, else None."""
    if not isinstance(avro_type, dict) or avro_type.get("type") != "bytes":
        return None
    if avro_type.get("logicalType") != "decimal":
        return None
    return int(avro_type["precision"]), int(avro_type.get("scale", 0))


_WRITERS: Final[dict[str, Callable[[Any], bytes]]] = {
    "boolean": _boolean,
    "int": long_bytes,
    "long": long_bytes,
    "float": _pack_float,
    "double": _pack_double,
    "string": string_bytes,
    "bytes": _bytes,
}


def _value_writer(avro_type: Any) -> Callable[[Any], bytes] | None:
    """The bytes writer of a non-union Avro type, or None when it is not generated."""
    base: Any
    logical: Any
    if isinstance(avro_type, str):
        base, logical = avro_type, None
    elif isinstance(avro_type, dict):
        base, logical = avro_type.get("type"), avro_type.get("logicalType")
    else:
        return None
    if base not in _PRIMITIVES:
        return None
    if logical is not None:
        decimal = _decimal_params(avro_type)
        return None if decimal is None else _decimal_writer(*decimal)
    return _WRITERS[base]


class _FieldPlan:
    """One field's writer: union branch bytes around its value's bytes, and constants."""

    def __init__(self, field_type: Any) -> None:
        self.prefix = b""
        self.null: bytes | None = None  # the bytes of a null value (None: not nullable)
        value_type = field_type
        if isinstance(field_type, list):
            if len(field_type) != 2 or _NULL_TYPE not in field_type:
                raise _Unsupported
            null_index = field_type.index(_NULL_TYPE)
            value_type = field_type[1 - null_index]
            self.prefix = long_bytes(1 - null_index)
            self.null = long_bytes(null_index)
        writer = _value_writer(value_type)
        if writer is None:
            raise _Unsupported
        self.writer = writer
        self.decimal = _decimal_params(value_type)

    def encode(self, value: Any) -> bytes:
        if value is None:
            if self.null is None:
                raise TypeError("a required field holds null")
            return self.null
        return self.prefix + self.writer(value)


class _Unsupported(Exception):
    """A field type the generated writer does not write (the fastavro path is kept)."""


def _field_types(schema: dict[str, Any] | None) -> dict[str, Any]:
    return {} if schema is None else {f["name"]: f["type"] for f in schema["fields"]}


class RowWriter:
    """Compiled row and key writers of one ``RelationEncoder``."""

    def __init__(
        self,
        row: Callable[[TupleValues, TupleValues | None, list[str] | None, bool], bytes],
        key: Callable[[TupleValues], bytes] | None,
    ) -> None:
        self.row = row
        self.key = key

    @classmethod
    def build(cls, encoder: RelationEncoder) -> RowWriter | None:
        """The writers of ``encoder``'s rows and keys; None if a field needs fastavro."""
        try:
            row = _compile_row(encoder)
            key = _compile_key(encoder) if encoder.key_schema is not None else None
        except _Unsupported:
            return None
        return cls(row, key)


def _compile_row(
    encoder: RelationEncoder,
) -> Callable[[TupleValues, TupleValues | None, list[str] | None, bool], bytes]:
    """The row writer: codecs' parsers called bare, and on any exception the same row
    written again through the checked decoders, which raise exactly what they raise."""
    env: dict[str, Any] = {}
    checked = _compiled("row", _row_lines(encoder, env, bare=False), env)
    env = {"checked": checked}
    body = _row_lines(encoder, env, bare=True)
    lines = [
        body[0],
        "    mark = 0 if unavailable is None else len(unavailable)",
        "    try:",
        *("    " + line for line in body[1:]),
        "    except Exception:",
        "        if unavailable is not None:",
        "            del unavailable[mark:]",
        "        return checked(values, old, unavailable, key_only)",
    ]
    row: Callable[[TupleValues, TupleValues | None, list[str] | None, bool], bytes]
    row = _compiled("row", lines, env)
    return row


def _row_lines(encoder: RelationEncoder, env: dict[str, Any], *, bare: bool) -> list[str]:
    """The source of a row writer; ``bare``: parsers without their DecodeError wrapper."""
    types = _field_types(encoder.value_row_schema)
    rel = encoder.relation
    ncols = len(rel.columns)
    env.update(
        UNCHANGED=UNCHANGED,
        DecodeError=DecodeError,
        BAD_LENGTH=f"{rel.namespace}.{rel.name}: tuple has {{}} columns, relation has {ncols}",
        join=b"".join,
        long_bytes=long_bytes,
    )
    lines = [
        "def row(values, old, unavailable, key_only):",
        f"    if len(values) != {ncols}:",
        "        raise DecodeError(BAD_LENGTH.format(len(values)))",
    ]
    parts: list[str] = []
    for j, f in enumerate(encoder.fields):
        plan = _FieldPlan(types[f.name])
        fill = plan.encode(f.filler)
        keyed = plan.encode(f.default) if encoder.has_default(f) else fill
        placeholder = plan.encode(f.placeholder)
        decode = getattr(f.decode, "__wrapped__", f.decode) if bare else f.decode
        env[f"d{j}"] = decode
        env[f"w{j}"] = plan.writer
        env[f"p{j}"] = plan.prefix
        env[f"F{j}"] = fill
        env[f"K{j}"] = keyed
        env[f"s{j}"] = _slow_path(
            index=f.index,
            name=f.name,
            decode=f.decode,
            plan=plan,
            fill=fill,
            placeholder=placeholder,
        )
        prefix = f"p{j} + " if plan.prefix else ""
        lines += [f"    v = values[{f.index}]", "    if v.__class__ is str:"]
        if bare and decode is keep_text and plan.writer is string_bytes:
            # Text as it is: the Avro string is its UTF-8 bytes behind their length.
            lines += ["        e = v.encode()", f"        b{j} = {prefix}long_bytes(len(e)) + e"]
        elif bare and plan.decimal is not None and parses_decimal_text(f.decode):
            env[f"t{j}"] = _decimal_text_writer(*plan.decimal)
            lines += [
                f"        e = t{j}(v)",
                "        if e is None:",
                f"            x = d{j}(v)",
                f"            b{j} = F{j} if x is None else {prefix}w{j}(x)",
                "        else:",
                f"            b{j} = {prefix}e",
            ]
        else:
            lines += [
                f"        x = d{j}(v)",
                f"        b{j} = F{j} if x is None else {prefix}w{j}(x)",
            ]
        lines += [
            "    elif v is None:",
            f"        b{j} = K{j} if key_only else F{j}",
            "    else:",
            f"        b{j} = s{j}(v, old, unavailable)",
        ]
        parts.append(f"b{j}")
    lines.append(f"    return join(({', '.join(parts)}{',' if len(parts) == 1 else ''}))")
    return lines


def _slow_path(
    *,
    index: int,
    name: str,
    decode: Callable[[str], Any],
    plan: _FieldPlan,
    fill: bytes,
    placeholder: bytes,
) -> Callable[[Any, TupleValues | None, list[str] | None], bytes]:
    """An unchanged TOAST value (or its prior value from ``old``), or a binary value."""

    def slow(value: Any, old: TupleValues | None, unavailable: list[str] | None) -> bytes:
        if value is UNCHANGED and old is not None:
            prior = old[index]
            if prior is not UNCHANGED:
                value = prior
        if value is None:
            return fill  # a prior null (``old`` never comes with a key-only image)
        if value is UNCHANGED:
            if unavailable is not None:
                unavailable.append(name)
            return placeholder
        decoded = decode(value if value.__class__ is str else bytes(value).decode())
        return fill if decoded is None else plan.encode(decoded)

    return slow


def _compile_key(encoder: RelationEncoder) -> Callable[[TupleValues], bytes]:
    types = _field_types(encoder.key_schema)
    rel = encoder.relation
    env: dict[str, Any] = {"UNCHANGED": UNCHANGED, "join": b"".join, "missing": _missing_key}
    lines = ["def key(values):"]
    parts: list[str] = []
    for j, f in enumerate(encoder.key_fields):
        plan = _FieldPlan(types[f.name])
        env[f"d{j}"] = f.decode
        env[f"e{j}"] = plan.encode
        env[f"c{j}"] = (f"{rel.namespace}.{rel.name}", f.column)
        lines += [
            f"    v = values[{f.index}]",
            "    if v is None or v is UNCHANGED:",
            f"        missing(*c{j})",
            f"    b{j} = e{j}(d{j}(v if v.__class__ is str else bytes(v).decode()))",
        ]
        parts.append(f"b{j}")
    lines.append(f"    return join(({', '.join(parts)}{',' if len(parts) == 1 else ''}))")
    key: Callable[[TupleValues], bytes] = _compiled("key", lines, env)
    return key


def _missing_key(table: str, column: str) -> None:
    raise DecodeError(f"{table}: key column {column!r} has no value")


def _compiled(name: str, lines: list[str], env: dict[str, Any]) -> Any:
    code = compile("\n".join(lines) + "\n", f"<cdcsync {name} writer>", "exec")
    exec(code, env)  # noqa: S102 - source built above from constants only
    return env[name]
