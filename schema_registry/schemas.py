"""Avro schema texts: validation, canonical form, normalised form, identity fingerprint.

Only Avro is supported. Invariants:

- ``canonical`` is the schema as Confluent's ``AvroSchema.canonicalString()``
  writes it: parsed and re-serialised the way Apache Avro's Java
  ``Schema.toString()`` does (attributes in Java's order, names short with a
  ``namespace`` only where it differs from the enclosing one, primitives
  without properties as plain strings, references to known named types by
  name). Two spellings of one schema (attribute order, whitespace,
  ``"string"`` vs ``{"type":"string"}``, a fullname vs name + namespace) have
  the same canonical text, hence the same id, and Java clients that look a
  schema up by their own ``toString()`` find it. This is the text the
  registry stores and returns.
- ``normalized_text`` is used when a client asks for ``normalize=true``: the
  Avro Parsing Canonical Form (fully qualified names, no ``namespace``, no
  ``doc``, primitives written as plain strings, attributes in the order
  name, type, fields, symbols, items, values, size) extended with what PCF
  drops but that matters to readers: ``default``, ``order`` (unless
  ascending), ``aliases`` (fully qualified, sorted) and every other property
  (``logicalType``, ``precision``, ``scale``, custom ones) sorted by key.
- a schema is valid when ``avro.schema`` parses it (names, types, enum
  symbols, duplicate fields) and every field default and enum default
  matches its type (a union's default matches its first branch, as the Avro
  specification says). Errors are ``InvalidSchemaError`` with the parser's
  reason.
- a schema text whose JSON nests deeper than ``MAX_DEPTH`` levels is
  invalid (``InvalidSchemaError``), checked before anything recurses over it,
  so no schema can exhaust the interpreter's recursion limit.
- schema references: each reference is resolved by the service to a schema
  text, and the referenced texts are parsed first, into the same name table,
  so the referring schema may use their named types.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import avro.errors
import avro.name
import avro.schema

from cdc.core.errors import SchemaError

AVRO = "AVRO"
PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
_PCF_ORDER = ("name", "type", "fields", "symbols", "items", "values", "size")
MAX_DEPTH = 300  # JSON nesting levels of one schema text (a record level takes three)
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class InvalidSchemaError(SchemaError):
    """A schema text is not a valid Avro schema; the message says why."""


@dataclass(frozen=True, slots=True)
class Reference:
    """A schema reference: the named type ``name`` is defined by ``subject`` version ``version``."""

    name: str
    subject: str
    version: int

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "subject": self.subject, "version": self.version}


@dataclass(frozen=True, slots=True)
class ParsedSchema:
    """A validated schema: its parsed form and the two texts used for identity.

    ``schema`` is an ``avro.schema.Schema`` for Avro, the JSON document for JSON Schema.
    """

    schema: Any
    canonical: str
    normalized: str


def json_depth(value: Any) -> int:
    """How deeply JSON arrays and objects nest in ``value`` (iteratively, for any depth)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth) for child in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def load_json(text: str) -> Any:
    """A schema text's JSON; ``InvalidSchemaError`` if not JSON or nested too deeply."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InvalidSchemaError(f"Invalid schema: the schema is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep() from exc
    if json_depth(data) > MAX_DEPTH:
        raise _too_deep()
    return data


def _too_deep() -> InvalidSchemaError:
    return InvalidSchemaError(
        f"Invalid schema: JSON arrays and objects nest deeper than {MAX_DEPTH} levels"
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def canonical_text(text: str, *, referenced: Sequence[str] = ()) -> str:
    """The canonical form of a valid schema text (see the module docstring)."""
    return parse(text, referenced=referenced).canonical


def parse(text: str, *, referenced: Sequence[str] = ()) -> ParsedSchema:
    """Validate ``text`` (after the ``referenced`` schema texts) and compute its forms."""
    data = load_json(text)
    names = avro.name.Names()
    try:
        for ref_text in referenced:
            avro.schema.make_avsc_object(load_json(ref_text), names)
        schema = avro.schema.make_avsc_object(data, names)
    except (avro.errors.AvroException, TypeError, ValueError, KeyError, AttributeError) as exc:
        reason = str(exc) or type(exc).__name__
        raise InvalidSchemaError(f"Invalid schema: {reason}") from exc
    known = _named_types(referenced)
    _check_defaults(data, namespace=None, named=dict(known))
    canonical = _compact(_JavaForm(set(known)).write(data, None))
    return ParsedSchema(
        schema=schema, canonical=canonical, normalized=_compact(_normal(data, None))
    )


def fingerprint(schema_type: str, canonical: str, *, references: Sequence[Reference]) -> str:
    """The identity of a stored schema: type, canonical text and references."""
    refs = _compact([r.to_json() for r in references])
    digest = hashlib.sha256(f"{schema_type}\0{canonical}\0{refs}".encode())
    return digest.hexdigest()


def references_json(references: Sequence[Reference]) -> str:
    return _compact([r.to_json() for r in references])


def references_from_json(text: str) -> tuple[Reference, ...]:
    return tuple(
        Reference(str(r["name"]), str(r["subject"]), int(r["version"])) for r in json.loads(text)
    )


# ---------------------------------------------------------------- names


def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _own_namespace(node: dict[str, Any], enclosing: str | None) -> str | None:
    name = str(node.get("name", ""))
    if "." in name:
        return name.rpartition(".")[0]
    ns = node.get("namespace", enclosing)
    return str(ns) if ns else None


def _named_types(texts: Sequence[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for text in texts:
        _collect_named(load_json(text), None, found=found)
    return found


def _collect_named(node: Any, namespace: str | None, *, found: dict[str, dict[str, Any]]) -> None:
    if isinstance(node, list):
        for branch in node:
            _collect_named(branch, namespace, found=found)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in NAMED:
            ns = _own_namespace(node, namespace)
            found[_fullname(str(node["name"]), ns)] = {**node, "__ns": ns}
            for field in node.get("fields", []) or []:
                _collect_named(field.get("type"), ns, found=found)
        elif kind == "array":
            _collect_named(node.get("items"), namespace, found=found)
        elif kind == "map":
            _collect_named(node.get("values"), namespace, found=found)
        elif isinstance(kind, dict | list):
            _collect_named(kind, namespace, found=found)


# ---------------------------------------------------------------- defaults


def _check_defaults(data: Any, *, namespace: str | None, named: dict[str, dict[str, Any]]) -> None:
    """Raise ``InvalidSchemaError`` naming the first field whose default does not fit its type."""
    _collect_named(data, namespace, found=named)
    _walk_defaults(data, namespace, named=named, seen=set())


def _walk_defaults(
    node: Any, namespace: str | None, named: dict[str, dict[str, Any]], seen: set[str]
) -> None:
    if isinstance(node, list):
        for branch in node:
            _walk_defaults(branch, namespace, named=named, seen=seen)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("record", "error"):
        ns = _own_namespace(node, namespace)
        full = _fullname(str(node["name"]), ns)
        if full in seen:
            return
        seen.add(full)
        for field in node.get("fields", []):
            if "default" in field and not _fits(
                field["default"], field["type"], namespace=ns, named=named
            ):
                raise InvalidSchemaError(
                    f"Invalid schema: invalid default for field {field['name']!r} of {full}:"
                    f" {_compact(field['default'])} is not a {_compact(field['type'])}"
                )
            _walk_defaults(field["type"], ns, named=named, seen=seen)
    elif kind == "enum" and "default" in node and node["default"] not in node.get("symbols", []):
        raise InvalidSchemaError(
            f"Invalid schema: enum default {_compact(node['default'])} of {node['name']}"
            " is not one of its symbols"
        )
    elif kind == "array":
        _walk_defaults(node.get("items"), namespace, named=named, seen=seen)
    elif kind == "map":
        _walk_defaults(node.get("values"), namespace, named=named, seen=seen)
    elif isinstance(kind, dict | list):
        _walk_defaults(kind, namespace, named=named, seen=seen)


def _fits(
    value: Any, schema: Any, *, namespace: str | None, named: dict[str, dict[str, Any]]
) -> bool:
    """Whether the JSON ``value`` is a valid default for ``schema`` (Avro JSON encoding)."""
    if isinstance(schema, list):
        return bool(schema) and _fits(value, schema[0], namespace=namespace, named=named)
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return _fits_primitive(value, schema)
        target = named.get(_fullname(schema, namespace)) or named.get(schema)
        if target is None:
            return True  # an unresolved name was already reported by the parser
        return _fits(value, target, namespace=target.get("__ns"), named=named)
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if isinstance(kind, str) and kind in PRIMITIVES:
        return _fits_primitive(value, kind)
    if kind in ("record", "error"):
        ns = _own_namespace(schema, namespace)
        if not isinstance(value, dict):
            return False
        return all(
            (f["name"] in value and _fits(value[f["name"]], f["type"], namespace=ns, named=named))
            or (f["name"] not in value and "default" in f)
            for f in schema.get("fields", [])
        )
    if kind == "enum":
        return isinstance(value, str) and value in schema.get("symbols", [])
    if kind == "fixed":
        return isinstance(value, str) and len(value) == schema.get("size")
    if kind == "array":
        return isinstance(value, list) and all(
            _fits(v, schema.get("items"), namespace=namespace, named=named) for v in value
        )
    if kind == "map":
        return isinstance(value, dict) and all(
            _fits(v, schema.get("values"), namespace=namespace, named=named) for v in value.values()
        )
    return _fits(value, kind, namespace=namespace, named=named)


def _fits_primitive(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in _INT_RANGE:
        low, high = _INT_RANGE[kind]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if kind in ("float", "double"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)  # string, bytes


# ---------------------------------------------------------------- normal form


def _normal(node: Any, namespace: str | None) -> Any:
    if isinstance(node, str):
        return node if node in PRIMITIVES else _fullname(node, namespace)
    if isinstance(node, list):
        return [_normal(branch, namespace) for branch in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    out: dict[str, Any] = {}
    extras = {k: v for k, v in node.items() if k not in (*_PCF_ORDER, "namespace", "doc")}
    ns = namespace
    if kind in NAMED:
        ns = _own_namespace(node, namespace)
        out["name"] = _fullname(str(node["name"]), ns)
        out["type"] = kind
        if kind in ("record", "error"):
            out["fields"] = [_normal_field(f, ns) for f in node.get("fields", [])]
        elif kind == "enum":
            out["symbols"] = list(node.get("symbols", []))
        else:
            out["size"] = node.get("size")
        if "aliases" in extras:
            extras["aliases"] = sorted(_fullname(str(a), ns) for a in extras["aliases"])
    elif kind == "array":
        out["type"] = kind
        out["items"] = _normal(node.get("items"), namespace)
    elif kind == "map":
        out["type"] = kind
        out["values"] = _normal(node.get("values"), namespace)
    elif isinstance(kind, str) and kind in PRIMITIVES:
        if not extras:
            return kind
        out["type"] = kind
    else:
        out["type"] = _normal(kind, namespace)
    return _with_extras(out, extras)


def _normal_field(field: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": field["name"], "type": _normal(field["type"], namespace)}
    extras = {k: v for k, v in field.items() if k not in ("name", "type", "doc")}
    if extras.get("order") == "ascending":
        del extras["order"]
    if "aliases" in extras:
        extras["aliases"] = sorted(str(a) for a in extras["aliases"])
    return _with_extras(out, extras)


def _with_extras(out: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    for key in ("default", "order", "aliases"):
        if key in extras:
            out[key] = extras.pop(key)
    for key in sorted(extras):
        out[key] = extras[key]
    return out


# ---------------------------------------------------------------- canonical (Java) form

_SCHEMA_RESERVED = frozenset(
    {"doc", "fields", "items", "name", "namespace", "size", "symbols", "values", "type", "aliases"}
)
_FIELD_RESERVED = frozenset({"default", "doc", "name", "order", "type", "aliases"})
_TYPE_NAMES = PRIMITIVES | NAMED | {"array", "map", "union"}


class _JavaForm:
    """Apache Avro Java's ``Schema.toString()`` over an already validated schema's JSON."""

    def __init__(self, known: set[str]) -> None:
        self._defined = set(known)

    def _resolve(self, name: str, space: str | None) -> str:
        full = _fullname(name, space)
        if full not in self._defined and name in self._defined:
            return name
        return full

    @staticmethod
    def _qualified(full: str, space: str | None) -> str:
        ns, _, short = full.rpartition(".")
        if ns and ns == space and short not in _TYPE_NAMES:
            return short
        return full

    def write(self, node: Any, space: str | None) -> Any:
        if isinstance(node, str):
            if node in PRIMITIVES:
                return node
            return self._qualified(self._resolve(node, space), space)
        if isinstance(node, list):
            return [self.write(branch, space) for branch in node]
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if isinstance(kind, dict | list):
            return self.write(kind, space)
        if kind in NAMED:
            return self._named(node, str(kind), space)
        props = {k: v for k, v in node.items() if k not in _SCHEMA_RESERVED}
        if kind == "array":
            return {"type": "array", "items": self.write(node.get("items"), space), **props}
        if kind == "map":
            return {"type": "map", "values": self.write(node.get("values"), space), **props}
        if isinstance(kind, str) and kind in PRIMITIVES:
            return {"type": kind, **props} if props else kind
        return self.write(kind, space)

    def _named(self, node: dict[str, Any], kind: str, space: str | None) -> Any:
        own = _own_namespace(node, space)
        full = _fullname(str(node["name"]).rpartition(".")[2], own)
        if full in self._defined:
            return self._qualified(full, space)
        self._defined.add(full)
        out: dict[str, Any] = {"type": kind, "name": full.rpartition(".")[2]}
        if own != space:
            out["namespace"] = own or ""
        if "doc" in node:
            out["doc"] = node["doc"]
        reserved = _SCHEMA_RESERVED
        if kind in ("record", "error"):
            out["fields"] = [self._field(f, own) for f in node.get("fields", [])]
        elif kind == "enum":
            out["symbols"] = list(node.get("symbols", []))
            if "default" in node:
                out["default"] = node["default"]
            reserved = reserved | {"default"}
        else:
            out["size"] = node.get("size")
        out.update((k, v) for k, v in node.items() if k not in reserved)
        if node.get("aliases"):
            out["aliases"] = [self._qualified(_fullname(str(a), own), own) for a in node["aliases"]]
        return out

    def _field(self, field: dict[str, Any], space: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": field["name"], "type": self.write(field["type"], space)}
        if "doc" in field:
            out["doc"] = field["doc"]
        if "default" in field:
            out["default"] = field["default"]
        order = str(field.get("order", "ascending")).lower()
        if order != "ascending":
            out["order"] = order
        if field.get("aliases"):
            out["aliases"] = [str(a) for a in field["aliases"]]
        out.update((k, v) for k, v in field.items() if k not in _FIELD_RESERVED)
        return out
