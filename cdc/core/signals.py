"""Signals to capture: transactional logical messages any process writes into the source.

Capture reads its own replication stream, so a message written with
``pg_logical_emit_message(true, SIGNAL_PREFIX, content)`` reaches it in commit order, with
no table written (like Debezium's signal table, without the table). ``cdcsync snapshot``
asks for incremental snapshots that way (``cdc.capture.snapshot.plan.SnapshotSignal``);
sync asks for rows to be read again by key with ``RereadSignal``.

Invariant: content is JSON with a ``type``; a reader refuses content it does not know with
``SignalError`` (logged and skipped by capture, never fatal).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["SIGNAL_PREFIX", "RereadSignal", "SignalError"]

SIGNAL_PREFIX: Final = "cdcsync.signal"


class SignalError(ValueError):
    """A signal's content is not one this version understands."""


@dataclass(frozen=True, slots=True)
class RereadSignal:
    """Read these rows again by key and publish them as snapshot reads.

    ``keys`` maps ``schema.table`` to primary keys, each as ``{column: text}`` (the text
    PostgreSQL reads back with a cast to the column's type).
    """

    request: str
    keys: Mapping[str, tuple[Mapping[str, str | None], ...]]

    def encode(self) -> str:
        return json.dumps(
            {
                "type": "reread",
                "request": self.request,
                "keys": {t: [dict(k) for k in ks] for t, ks in self.keys.items()},
            }
        )

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> RereadSignal:
        request, keys = data.get("request"), data.get("keys")
        if (
            data.get("type") != "reread"
            or not isinstance(request, str)
            or not isinstance(keys, dict)
            or not all(
                isinstance(table, str)
                and isinstance(rows, list)
                and all(
                    isinstance(row, dict)
                    and all(
                        isinstance(c, str) and (v is None or isinstance(v, str))
                        for c, v in row.items()
                    )
                    for row in rows
                )
                for table, rows in keys.items()
            )
        ):
            raise SignalError(f"signal {dict(data)!r} is not a re-read request")
        return cls(request, {t: tuple(rows) for t, rows in keys.items()})
