"""What a reconcile run found: keys missing, extra and different, and its summary (pure).

A ``Drift`` is one entity key whose target state is not the mapper applied to the source:

- ``missing``: the source maps to the entity, the target has no live entity;
- ``extra``: the target holds a live entity no source row maps to (``source_key`` names
  the source row when one maps to a delete of it, else None);
- ``different``: both exist and ``fields`` lists the fields whose values differ.

``compare_fields`` compares JSON-mode values (``model_dump(mode="json")`` of the expected
upsert against the target's values validated by the same model), so ``Decimal("1.50")``
in a ``numeric`` column equals ``"1.50"`` in the mapper's model. Fields the target does not
return are not compared (a target may keep fewer fields than the model).

Exit codes of ``cdcsync reconcile``: ``EXIT_EQUAL`` (0) when nothing differs,
``EXIT_DRIFT`` (3) when drift was found (also after a repair was requested: the repair
runs through the pipeline afterwards), 1 when the run failed (``error``: a target or the
source down), 2 for a configuration error. Mapper failures on single rows are counted in
``mapper_failures`` and do not fail the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

__all__ = [
    "EXIT_DRIFT",
    "EXIT_EQUAL",
    "EXIT_FAILED",
    "Drift",
    "MapperFailure",
    "Report",
    "compare_fields",
]

EXIT_EQUAL: Final = 0
EXIT_FAILED: Final = 1
EXIT_DRIFT: Final = 3

DriftKind = Literal["missing", "extra", "different"]

# The most items of each kind listed in the text output (the JSON lists them all).
_TEXT_LIMIT: Final = 50


@dataclass(frozen=True, slots=True)
class Drift:
    """One entity key that differs between the mapped source and the target."""

    kind: DriftKind
    entity: str
    key: str
    table: str | None = None
    source_key: tuple[str | None, ...] | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MapperFailure:
    """A source row the mapper could not map (counted, reported, not fatal)."""

    table: str
    source_key: tuple[str | None, ...]
    error: str


@dataclass
class Report:
    """One run of one integration."""

    integration: str
    sink: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    rows_checked: int = 0
    drifts: list[Drift] = field(default_factory=list)
    mapper_failures: list[MapperFailure] = field(default_factory=list)
    repaired: int = 0
    repair_request: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def of(self, kind: DriftKind) -> list[Drift]:
        return [d for d in self.drifts if d.kind == kind]

    @property
    def missing(self) -> int:
        return len(self.of("missing"))

    @property
    def extra(self) -> int:
        return len(self.of("extra"))

    @property
    def different(self) -> int:
        return len(self.of("different"))

    @property
    def drift_rows(self) -> int:
        return len(self.drifts)

    @property
    def result(self) -> str:
        """``failed``, ``drift`` or ``equal``."""
        if self.error is not None:
            return "failed"
        return "drift" if self.drifts else "equal"

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_FAILED
        return EXIT_DRIFT if self.drifts else EXIT_EQUAL

    def summary(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "sink": self.sink,
            "result": self.result,
            "started_at": self.started_at.isoformat(),
            "ended_at": None if self.ended_at is None else self.ended_at.isoformat(),
            "rows_checked": self.rows_checked,
            "missing": self.missing,
            "extra": self.extra,
            "different": self.different,
            "mapper_failures": len(self.mapper_failures),
            "repaired": self.repaired,
            "repair_request": self.repair_request,
            "error": self.error,
        }

    def to_json(self) -> str:
        data = self.summary()
        data["exit_code"] = self.exit_code
        data["drift"] = [_drift_json(d) for d in self.drifts]
        data["mapper_failure_rows"] = [
            {**asdict(f), "source_key": list(f.source_key)} for f in self.mapper_failures
        ]
        data["notes"] = list(self.notes)
        return json.dumps(data, indent=2)

    def to_text(self) -> str:
        lines: list[str] = []
        kinds: tuple[DriftKind, ...] = ("missing", "extra", "different")
        for kind in kinds:
            items = self.of(kind)
            for d in items[:_TEXT_LIMIT]:
                where = "" if d.source_key is None else f" (source {d.table} {_key_text(d)})"
                what = f": {', '.join(d.fields)}" if d.fields else ""
                lines.append(f"{kind:9} {d.entity} {d.key}{where}{what}")
            if len(items) > _TEXT_LIMIT:
                lines.append(f"{kind:9} ... and {len(items) - _TEXT_LIMIT} more (see --json)")
        for f in self.mapper_failures[:_TEXT_LIMIT]:
            lines.append(f"unmapped  {f.table} {','.join(map(str, f.source_key))}: {f.error}")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append(
            f"{self.integration}: {self.result}: {self.rows_checked:,} rows checked, "
            f"{self.missing} missing, {self.extra} extra, {self.different} different, "
            f"{len(self.mapper_failures)} not mappable, {self.repaired} sent for repair"
        )
        if self.error is not None:
            lines.append(f"{self.integration}: the run failed: {self.error}")
        return "\n".join(lines)


def _key_text(d: Drift) -> str:
    assert d.source_key is not None
    return ",".join("NULL" if k is None else k for k in d.source_key)


def _drift_json(d: Drift) -> dict[str, Any]:
    return {
        "kind": d.kind,
        "entity": d.entity,
        "key": d.key,
        "table": d.table,
        "source_key": None if d.source_key is None else list(d.source_key),
        "fields": list(d.fields),
    }


def compare_fields(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields of ``expected`` whose value ``actual`` holds differently (JSON-mode values);
    fields ``actual`` lacks are left out."""
    return tuple(
        name
        for name, want in expected.items()
        if name in actual and _canonical(actual[name]) != _canonical(want)
    )


def _canonical(value: Any) -> Any:
    """Values that mean the same compare equal: floats equal to ints, nested JSON alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value
