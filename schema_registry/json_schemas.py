"""JSON Schema texts (``schemaType: JSON``): validation, canonical and normal forms, compatibility.

Validation is the ``jsonschema`` library's: a schema is valid when the
meta-schema of its ``$schema`` (draft 7 when absent, as Confluent's default)
accepts it. Invariants:

- ``canonical`` is the JSON re-serialised compactly with the attribute order
  kept (Confluent's ``JsonSchema.canonicalString()``: whitespace never
  matters, attribute order does); ``normalized`` (``normalize=true``) also
  sorts every object's keys.
- a schema nesting deeper than ``schemas.MAX_DEPTH`` is invalid, as for Avro.
- compatibility follows Confluent's JSON Schema rules in their meaning: a
  reader schema is compatible with a writer schema when it accepts every
  document the writer accepts. Checked keyword by keyword: ``type``
  (``integer`` within ``number``), numeric and length bounds, ``pattern``,
  ``enum``/``const``, ``properties`` against open and closed content models
  (``additionalProperties``), ``required`` (a property made required is
  compatible only with a ``default``), ``items``, ``minItems``/``maxItems``,
  ``uniqueItems``, ``anyOf``/``oneOf`` (each writer branch read by a reader
  branch), local ``$ref`` and ``$ref`` to referenced schemas by their
  reference name. Any other keyword that differs between the two is reported
  as incompatible (conservative: never a false "compatible").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from schema_registry.schemas import InvalidSchemaError, ParsedSchema, load_json

JSON = "JSON"
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$id", "id", "$schema", "$comment"}
)
_CHECKED = frozenset(
    {
        "type",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "enum",
        "const",
        "properties",
        "additionalProperties",
        "required",
        "minProperties",
        "maxProperties",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
        "anyOf",
        "oneOf",
        "$ref",
        "definitions",
        "$defs",
    }
)


def _compact(value: Any, *, sort: bool = False) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort)


def parse(text: str) -> ParsedSchema:
    """Validate a JSON Schema text against its meta-schema and compute its forms."""
    data = load_json(text)
    if not isinstance(data, dict | bool):
        raise InvalidSchemaError("Invalid schema: a JSON Schema is an object or a boolean")
    validator = jsonschema.validators.validator_for(data, default=jsonschema.Draft7Validator)
    try:
        validator.check_schema(data)
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise InvalidSchemaError(f"Invalid schema: at {where}: {exc.message}") from exc
    return ParsedSchema(schema=data, canonical=_compact(data), normalized=_compact(data, sort=True))


class _Docs:
    """Resolves ``$ref`` in a schema and the schemas it references (by reference name)."""

    def __init__(self, root: Any, referenced: Mapping[str, Any]) -> None:
        self.root = root
        self.referenced = referenced

    def resolve(self, node: Any, doc: Any) -> tuple[Any, Any]:
        """``node`` with its ``$ref`` (if any) followed, and the document it lives in."""
        for _ in range(64):
            if not isinstance(node, dict) or not isinstance(node.get("$ref"), str):
                return node, doc
            base, _, pointer = node["$ref"].partition("#")
            target = doc if not base else self.referenced.get(base)
            if target is None:
                return node, doc
            doc = target
            node = target
            for raw in (p for p in pointer.split("/") if p):
                part = raw.replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    return {"$ref": f"unresolvable:{node!r:.40}"}, doc
        return node, doc


def _types(node: Mapping[str, Any]) -> set[str] | None:
    kind = node.get("type")
    if kind is None:
        return None
    return {kind} if isinstance(kind, str) else {str(k) for k in kind}


class _Checker:
    def __init__(self, writer_docs: _Docs, reader_docs: _Docs) -> None:
        self.w = writer_docs
        self.r = reader_docs
        self.seen: set[tuple[int, int]] = set()
        self.messages: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.messages.append(f"{path or '#'}: {message}")

    def check(self, writer: Any, wdoc: Any, reader: Any, rdoc: Any, path: str) -> None:
        writer, wdoc = self.w.resolve(writer, wdoc)
        reader, rdoc = self.r.resolve(reader, rdoc)
        key = (id(writer), id(reader))
        if key in self.seen:
            return
        self.seen.add(key)
        if reader is True or reader == {} or writer is False:
            return
        if reader is False:
            self.fail(path, "the reader accepts nothing")
            return
        if writer is True or writer == {}:
            writer = {}
        if not isinstance(writer, dict) or not isinstance(reader, dict):
            self.fail(path, "not a schema")
            return
        if "$ref" in writer or "$ref" in reader:
            if writer.get("$ref") != reader.get("$ref"):
                self.fail(path, f"$ref changed from {writer.get('$ref')} to {reader.get('$ref')}")
            return
        for combinator in ("anyOf", "oneOf"):
            if combinator in writer or combinator in reader:
                self._combined(writer, wdoc, reader, rdoc, path)
                return
        self._type(writer, reader, path)
        self._bounds(writer, reader, path)
        self._values(writer, reader, path)
        self._object(writer, wdoc, reader, rdoc, path)
        self._array(writer, wdoc, reader, rdoc, path)
        for name in sorted(set(writer) | set(reader)):
            if name in _ANNOTATIONS or name in _CHECKED:
                continue
            if writer.get(name) != reader.get(name):
                self.fail(path, f"'{name}' changed")

    def _combined(self, writer: Any, wdoc: Any, reader: Any, rdoc: Any, path: str) -> None:
        w_branches = writer.get("anyOf", writer.get("oneOf", [writer]))
        r_branches = reader.get("anyOf", reader.get("oneOf", [reader]))
        for index, branch in enumerate(w_branches):
            for option in r_branches:
                trial = _Checker(self.w, self.r)
                trial.seen = set(self.seen)
                trial.check(branch, wdoc, option, rdoc, path)
                if not trial.messages:
                    break
            else:
                self.fail(path, f"writer branch {index} is read by no branch of the reader")

    def _type(self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> None:
        wanted, given = _types(reader), _types(writer)
        if wanted is None:
            return
        if given is None:
            self.fail(path, f"type narrowed to {sorted(wanted)}")
            return
        if "number" in wanted:
            wanted = wanted | {"integer"}
        lost = given - wanted
        if lost:
            self.fail(path, f"type narrowed: {sorted(lost)} no longer accepted")

    def _bounds(self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> None:
        lower = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
        upper = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
        for name in lower + upper:
            if name not in reader or isinstance(reader[name], bool):
                continue
            limit = reader[name]
            have = writer.get(name)
            if have is None or isinstance(have, bool):
                self.fail(path, f"'{name}' {limit} added")
            elif (name in lower and have < limit) or (name in upper and have > limit):
                self.fail(path, f"'{name}' tightened from {have} to {limit}")
        if "multipleOf" in reader:
            step, have = reader["multipleOf"], writer.get("multipleOf")
            if not have or (have / step) != int(have / step):
                self.fail(path, f"'multipleOf' {step} does not divide the writer's {have}")
        for name in ("pattern", "format"):
            if name in reader and writer.get(name) != reader[name]:
                self.fail(path, f"'{name}' changed to {reader[name]!r}")
        if reader.get("uniqueItems") is True and writer.get("uniqueItems") is not True:
            self.fail(path, "'uniqueItems' added")

    def _values(self, writer: Mapping[str, Any], reader: Mapping[str, Any], path: str) -> None:
        if "const" in reader and writer.get("const", writer.get("enum")) not in (
            reader["const"],
            [reader["const"]],
        ):
            self.fail(path, "'const' added or changed")
        if "enum" in reader:
            given = writer.get("enum", [writer["const"]] if "const" in writer else None)
            if given is None or any(value not in reader["enum"] for value in given):
                self.fail(path, "'enum' narrowed")

    def _object(self, writer: Any, wdoc: Any, reader: Any, rdoc: Any, path: str) -> None:
        w_props: dict[str, Any] = writer.get("properties", {})
        r_props: dict[str, Any] = reader.get("properties", {})
        w_extra = writer.get("additionalProperties", True)
        r_extra = reader.get("additionalProperties", True)
        for name in sorted(set(w_props) | set(r_props)):
            where = f"{path}/properties/{name}"
            if name in w_props and name in r_props:
                self.check(w_props[name], wdoc, r_props[name], rdoc, where)
            elif name in w_props:
                if r_extra is False:
                    self.fail(where, "property removed from a closed content model")
                else:
                    self.check(w_props[name], wdoc, r_extra, rdoc, where)
            elif w_extra is not False:
                # The writer's open content model may have written anything under this name.
                trial = _Checker(self.w, self.r)
                trial.check(w_extra, wdoc, r_props[name], rdoc, where)
                if trial.messages:
                    self.fail(where, "property added to an open content model")
        if w_extra is not False and not (r_extra is True or r_extra == {}):
            self.check(w_extra, wdoc, r_extra, rdoc, f"{path}/additionalProperties")
        for name in reader.get("required", []):
            if name in writer.get("required", []):
                continue
            prop = r_props.get(name, {})
            if not (isinstance(prop, dict) and "default" in prop):
                self.fail(path, f"required property '{name}' added without a default")
        if writer.get("patternProperties") != reader.get("patternProperties"):
            self.fail(path, "'patternProperties' changed")

    def _array(self, writer: Any, wdoc: Any, reader: Any, rdoc: Any, path: str) -> None:
        if "items" not in reader:
            return
        items = reader["items"]
        if isinstance(items, list) or isinstance(writer.get("items"), list):
            if writer.get("items") != items:
                self.fail(path, "tuple 'items' changed")
            return
        self.check(writer.get("items", True), wdoc, items, rdoc, f"{path}/items")


def check(*, reader: Any, writer: Any, referenced: Mapping[str, Any] | None = None) -> list[str]:
    """Why ``reader`` does not accept every document ``writer`` accepts (empty: compatible)."""
    refs = referenced or {}
    checker = _Checker(_Docs(writer, refs), _Docs(reader, refs))
    checker.check(writer, writer, reader, reader, "#")
    return checker.messages


def referenced_documents(named_texts: Mapping[str, str]) -> dict[str, Any]:
    """Referenced schemas by reference name, parsed."""
    return {name: load_json(text) for name, text in named_texts.items()}


__all__ = ["JSON", "check", "parse", "referenced_documents"]
