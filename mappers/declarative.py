"""Declarative mappers: a ``DeclarativeMapping`` from the config turned into a ``Mapper``.

Semantics of one mapping (``integrations.NAME.mapper`` in the config):

- ``where`` (an expression, see ``mappers.expr``) selects rows: the target holds the rows
  that match. An insert whose row does not match yields nothing; an update or snapshot read
  whose ``after`` row does not match yields a delete of its key (the row may have matched
  before: a row that stops matching leaves the target), unless its ``before`` image shows
  for sure that it did not match before either.
  A delete is tested against its ``before`` image (else its key) and is dropped only
  when every column the filter reads is present and non-null there and the filter is
  false: with ``REPLICA IDENTITY DEFAULT`` the before image holds only the key, and a
  delete for a row that never matched is harmless, whereas a lost delete is not.
- ``key`` is a column name (``id``) or a template (``"{region}-{id}"``); a null or
  missing key column is a ``MappingError``.
- ``fields`` maps each target field to an expression over the row; ``constants`` are
  fixed values added to every entity.
- ``version_column`` is accepted and does not order anything: versions are always the
  commit LSN and the position in the transaction (``mappers.lww``: a column is another
  clock, never compared with commit order).
- ``model`` (``module:Class``) is a pydantic model validating the entity; without it a
  model named after the entity, with every mapped field typed ``Any``, is derived.
- ops ``c``/``u``/``r`` give an ``EntityUpsert``, ``d`` an ``EntityDelete``, ``t``
  (truncate) nothing.

Invariants:
- A field whose expression reads a column the event could not see (an unchanged TOAST
  value, ``TableEvent.unavailable``) is left out of the upsert and its *target* field name
  is listed in ``EntityUpsert.unavailable``; no placeholder ever reaches a model. A
  ``where`` or ``key`` reading such a column is a ``MappingError``.
- Every failure on an event is a ``MappingError`` naming the integration, the event's
  origin and, for validation errors, the field and its value; every mistake in the
  mapping itself is a ``ConfigError`` raised when the mapper is built, never per event.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from cdc.config import DeclarativeMapping
from cdc.core.errors import ConfigError, MappingError
from mappers.entity import EntityOp, MapContext, Mapper, Origin, TableEvent
from mappers.expr import Expression, compile_expression, describe
from mappers.references import load_callable

M = TypeVar("M", bound=BaseModel)

_UPSERT_OPS = frozenset({"c", "u", "r"})


def declarative_mapper(mapping: DeclarativeMapping, *, integration: str) -> Mapper:
    """Build the mapper of ``integrations.<integration>.mapper``; ``ConfigError`` if invalid."""
    where = f"integrations.{integration}.mapper"
    fields = tuple(
        (name, compile_expression(text, where=f"{where}.fields.{name}"))
        for name, text in mapping.fields.items()
    )
    names = [*mapping.fields, *mapping.constants]
    if mapping.model is None:
        model = _derived_model(mapping.entity, names, where=where)
    else:
        model = _load_model(mapping.model, names, where=f"{where}.model")
    return DeclarativeMapper(
        name=where,
        entity=mapping.entity,
        key=KeyTemplate.parse(mapping.key, where=f"{where}.key"),
        fields=fields,
        constants=dict(mapping.constants),
        where=None
        if mapping.where is None
        else compile_expression(mapping.where, where=f"{where}.where"),
        version_column=mapping.version_column,
        model=model,
    )


def validate_model(model: type[M], data: Mapping[str, Any], *, context: str) -> M:
    """``model`` validated from ``data``; a ``ValidationError`` becomes a ``MappingError``
    that starts with ``context`` and names each failing field and its value."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = ".".join(str(part) for part in error["loc"]) or "(entity)"
            if error["type"] == "missing":
                problems.append(f"field {loc!r} is missing")
            else:
                value = describe(error.get("input"))
                problems.append(f"field {loc!r}: {error['msg']} (value {value})")
        raise MappingError(
            f"{context}: not a valid {model.__name__}: {'; '.join(problems)}"
        ) from None


@functools.lru_cache(maxsize=256)
def partial_model(model: type[M], names: frozenset[str]) -> type[M]:
    """``model`` with the fields ``names`` made optional (``None``, not validated).

    Used for events that could not see some fields (unchanged TOAST values): the fields
    are left out of the upsert, so the model must not require them.
    """
    if not names:
        return model
    optional: dict[str, Any] = dict.fromkeys(names, (Any, None))
    return create_model(model.__name__, __base__=model, **optional)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """An entity key: one column (``id``) or a template of columns (``"{region}-{id}"``)."""

    text: str
    where: str
    parts: tuple[tuple[str, str | None], ...]  # (literal text, then a column or None)
    columns: frozenset[str]

    @classmethod
    def parse(cls, text: str, *, where: str) -> KeyTemplate:
        if "{" not in text and "}" not in text:
            column = text.strip()
            if not column:
                raise ConfigError(f"{where}: empty key")
            return cls(text=text, where=where, parts=(("", column),), columns=frozenset((column,)))
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(f"{where}: invalid key template {text!r}: {exc}") from None
        for literal, name, spec, conversion in parsed:
            if name is not None and (
                not name or spec or conversion or any(c in name for c in ".[]")
            ):
                raise ConfigError(
                    f"{where}: key template {text!r}: {{{name or ''}}} must name one column, "
                    "as {column}"
                )
            parts.append((literal, name))
        columns = frozenset(name for _, name in parts if name is not None)
        if not columns:
            raise ConfigError(f"{where}: key template {text!r} names no column")
        return cls(text=text, where=where, parts=tuple(parts), columns=columns)

    def render(self, row: Mapping[str, Any], *, origin: Origin) -> str:
        out: list[str] = []
        for literal, column in self.parts:
            out.append(literal)
            if column is None:
                continue
            value = row.get(column)
            if value is None:
                state = "is null" if column in row else "is not in the row"
                raise MappingError(f"{self.where}: {origin}: key column {column!r} {state}")
            out.append(value if isinstance(value, str) else str(value))
        return "".join(out)


# --------------------------------------------------------------------------- models


def _derived_model(entity: str, names: list[str], *, where: str) -> type[BaseModel]:
    for name in names:
        if not name.isidentifier() or name.startswith("_") or hasattr(BaseModel, name):
            raise ConfigError(
                f"{where}.fields.{name}: {name!r} cannot be a field name (use a name that is an "
                "identifier, does not start with '_' and is not a pydantic attribute)"
            )
    definitions: dict[str, Any] = dict.fromkeys(names, (Any, ...))
    try:
        return create_model(entity, __config__=ConfigDict(protected_namespaces=()), **definitions)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigError(f"{where}.fields: cannot make a model of {names}: {exc}") from None


def _load_model(ref: str, names: list[str], *, where: str) -> type[BaseModel]:
    model = load_callable(ref)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"{where}: {ref!r} is not a pydantic model class")
    declared = model.model_fields
    unknown = sorted(set(names) - set(declared))
    if unknown:
        raise ConfigError(
            f"{where}: {ref} has no field {unknown[0]!r} (its fields: {', '.join(declared)})"
        )
    unmapped = sorted(n for n, f in declared.items() if f.is_required() and n not in names)
    if unmapped:
        raise ConfigError(f"{where}: {ref} requires field {unmapped[0]!r}, which is not mapped")
    return model


# --------------------------------------------------------------------------- the mapper


@dataclass(frozen=True, slots=True)
class DeclarativeMapper:
    """The ``Mapper`` a ``DeclarativeMapping`` describes (see the module docstring)."""

    name: str
    entity: str
    key: KeyTemplate
    fields: tuple[tuple[str, Expression], ...]
    constants: Mapping[str, Any]
    where: Expression | None
    version_column: str | None
    model: type[BaseModel]

    def __call__(self, event: TableEvent, ctx: MapContext) -> list[EntityOp]:
        if event.op in _UPSERT_OPS:
            return self._upsert(event)
        if event.op == "d":
            return self._delete(event)
        if event.op == "t":
            return []
        raise MappingError(f"{self.name}: {event.origin}: unknown operation {event.op!r}")

    def _upsert(self, event: TableEvent) -> list[EntityOp]:
        row = event.after
        if row is None:
            raise MappingError(f"{self.name}: {event.origin}: {event.op!r} event has no row")
        hidden = event.unavailable
        if self.where is not None:
            self._check_visible(self.where.columns, hidden, what="where", event=event)
            if not _truth(self.where(row), self.where):
                return self._unmatched(event, row)
        self._check_visible(self.key.columns, hidden, what="key", event=event)
        key = self.key.render(row, origin=event.origin)
        data: dict[str, Any] = dict(self.constants)
        left_out: set[str] = set()
        for name, expression in self.fields:
            if hidden and not expression.columns.isdisjoint(hidden):
                left_out.add(name)
            else:
                data[name] = expression(row)
        model = validate_model(
            partial_model(self.model, frozenset(left_out)),
            data,
            context=f"{self.name}: {self.entity} {key!r} from {event.origin}",
        )
        upsert = event.upsert(self.entity, key, model, version_column=self.version_column)
        return [replace(upsert, unavailable=frozenset(left_out))]

    def _unmatched(self, event: TableEvent, row: Mapping[str, Any]) -> list[EntityOp]:
        """A row that does not match ``where``: deleted from the target unless it is known
        not to be there (a new row, or a before image that did not match either)."""
        if event.op == "c":
            return []
        if event.before is not None and self._excluded(event.before):
            return []
        self._check_visible(self.key.columns, event.unavailable, what="key", event=event)
        key = self.key.render(row, origin=event.origin)
        return [event.delete(self.entity, key)]

    def _delete(self, event: TableEvent) -> list[EntityOp]:
        image: dict[str, Any] = {**(event.key or {}), **(event.before or {})}
        if not image:
            raise MappingError(f"{self.name}: {event.origin}: delete without key or before image")
        if self.where is not None and self._excluded(image):
            return []
        key = self.key.render(image, origin=event.origin)
        return [event.delete(self.entity, key, version_column=self.version_column)]

    def _excluded(self, image: Mapping[str, Any]) -> bool:
        """Whether the delete's image shows for sure that the row never matched."""
        assert self.where is not None
        if any(image.get(column) is None for column in self.where.columns):
            return False
        try:
            return not _truth(self.where(image), self.where)
        except MappingError:
            return False

    def _check_visible(
        self, columns: frozenset[str], hidden: frozenset[str], *, what: str, event: TableEvent
    ) -> None:
        blind = sorted(columns & hidden)
        if blind:
            raise MappingError(
                f"{self.name}.{what}: {event.origin}: column {blind[0]!r} is an unchanged "
                "TOAST value the event does not carry"
            )


def _truth(value: Any, expression: Expression) -> bool:
    try:
        return bool(value)
    except (TypeError, ValueError, ArithmeticError):
        raise MappingError(
            f"{expression.where}: {expression.text!r} gave {describe(value)}, "
            "which is neither true nor false"
        ) from None
