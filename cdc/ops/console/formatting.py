"""How the console writes figures: the template filters and the replay message.

Invariants: pure; every filter takes ``None`` (not known) and answers ``-``; times are
shown in UTC, as the logs write them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cdc.sync.dead_letters import DlqReplayResult

__all__ = ["FILTERS", "replay_message"]


def num(value: Any) -> str:
    """An integer with thousands separators; ``-`` for unknown."""
    if value is None:
        return "-"
    return f"{round(float(value)):,}"


def per_s(value: Any) -> str:
    """A rate per second, to one decimal below 100."""
    if value is None:
        return "-"
    v = float(value)
    return f"{v:,.1f}/s" if v < 100 else f"{v:,.0f}/s"


def seconds(value: Any) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:,.1f} s"


def millis(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.1f} ms"


def size(value: Any) -> str:
    """Bytes in B, KiB, MiB or GiB."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:,.1f} GiB"


def utc(value: Any) -> str:
    """Unix time as ``HH:MM:SS`` UTC."""
    if value is None:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(float(value)))


def yes_no(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def slug(value: Any) -> str:
    """A state as a CSS class name: ``circuit open`` -> ``circuit-open``."""
    return str(value).replace(" ", "-").replace("_", "-")


FILTERS: dict[str, Callable[[Any], str]] = {
    "num": num,
    "per_s": per_s,
    "seconds": seconds,
    "millis": millis,
    "size": size,
    "utc": utc,
    "yes_no": yes_no,
    "slug": slug,
}


def replay_message(done: DlqReplayResult) -> str:
    """One sentence on what a replay did."""
    parts = [f"{len(done.replayed)} replayed ({done.applied} applied)"]
    if done.failed:
        first_id, first_error = done.failed[0]
        parts.append(f"{len(done.failed)} failed again (#{first_id}: {first_error})")
    if done.not_pending:
        parts.append(f"{len(done.not_pending)} no longer pending")
    return "Replay: " + ", ".join(parts) + "."
