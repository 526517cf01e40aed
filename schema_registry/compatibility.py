"""Schema compatibility: the Avro resolution rules applied per Confluent compatibility level.

Pure functions, no I/O. The reader/writer rules themselves are Apache Avro's
(``avro.compatibility.ReaderWriterCompatibilityChecker``); this module only
decides which pairs to check:

- BACKWARD: the new schema reads data written with the existing one;
- FORWARD: the existing schema reads data written with the new one;
- FULL: both; NONE: nothing is checked;
- the plain levels check against the latest existing version only, the
  ``_TRANSITIVE`` ones against every existing version.

Invariant: a result is compatible exactly when ``messages`` is empty.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import avro.compatibility
import avro.errors
import avro.schema

from schema_registry.schemas import InvalidSchemaError


class CompatibilityLevel(enum.StrEnum):
    """Confluent's compatibility levels."""

    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"

    @classmethod
    def parse(cls, value: str) -> CompatibilityLevel:
        """The level named by ``value`` (case-insensitive); ``ValueError`` if unknown."""
        return cls(value.strip().upper())

    @property
    def transitive(self) -> bool:
        return self.name.endswith("_TRANSITIVE")

    @property
    def backward(self) -> bool:
        return self.name.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        return self.name.startswith(("FORWARD", "FULL"))


@dataclass(frozen=True, slots=True)
class CompatibilityResult:
    """The outcome of a check: ``compatible`` and, when not, the reasons."""

    compatible: bool
    messages: tuple[str, ...] = ()

    @classmethod
    def of(cls, messages: Sequence[str]) -> CompatibilityResult:
        return cls(compatible=not messages, messages=tuple(messages))


def _parse(text: str, role: str) -> avro.schema.Schema:
    try:
        return avro.schema.parse(text)
    except (avro.errors.AvroException, ValueError, TypeError, KeyError) as exc:
        raise InvalidSchemaError(f"Invalid {role} schema: {exc}") from exc


def check_schemas(*, reader: avro.schema.Schema, writer: avro.schema.Schema) -> CompatibilityResult:
    """Whether ``reader`` can read data written with ``writer`` (parsed schemas)."""
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(reader, writer)
    if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
        return CompatibilityResult(compatible=True)
    kinds = ", ".join(sorted({i.name.upper() for i in result.incompatibilities}))
    where = ", ".join(sorted(result.locations))
    details = "; ".join(sorted(result.messages))
    return CompatibilityResult.of([f"{kinds} at {where}: {details}"])


def check(*, reader: str, writer: str) -> CompatibilityResult:
    """Whether the ``reader`` schema text can read data written with the ``writer`` text."""
    return check_schemas(reader=_parse(reader, "reader"), writer=_parse(writer, "writer"))


def check_level_schemas(
    level: CompatibilityLevel | str,
    *,
    new: Any,
    existing: Sequence[Any],
    labels: Sequence[str] | None = None,
    pair: Callable[[Any, Any], CompatibilityResult] | None = None,
) -> CompatibilityResult:
    """``check_level`` on parsed schemas; ``labels`` name the existing ones in messages.

    ``pair(reader, writer)`` decides one pair (Avro's rules by default; the JSON
    Schema rules for JSON schemas).
    """
    decide = pair or (lambda reader, writer: check_schemas(reader=reader, writer=writer))
    level = CompatibilityLevel.parse(level) if isinstance(level, str) else level
    if level is CompatibilityLevel.NONE or not existing:
        return CompatibilityResult(compatible=True)
    names = list(labels) if labels is not None else [f"#{i + 1}" for i in range(len(existing))]
    pairs = list(zip(existing, names, strict=True))
    if not level.transitive:
        pairs = pairs[-1:]
    messages: list[str] = []
    for old, label in pairs:
        if level.backward:
            result = decide(new, old)
            messages += [
                f"the new schema cannot read data written with {label}: {m}"
                for m in result.messages
            ]
        if level.forward:
            result = decide(old, new)
            messages += [
                f"{label} cannot read data written with the new schema: {m}"
                for m in result.messages
            ]
    return CompatibilityResult.of(messages)


def check_level(
    level: CompatibilityLevel | str, *, new: str, existing: Sequence[str]
) -> CompatibilityResult:
    """Check the ``new`` schema text against ``existing`` texts (oldest first) at ``level``."""
    return check_level_schemas(
        level,
        new=_parse(new, "new"),
        existing=[_parse(text, "existing") for text in existing],
        labels=[f"existing schema #{i + 1}" for i in range(len(existing))],
    )
