"""The contract between sync workers and sinks.

Delivery is at-least-once: after a crash or a replay a sink sees the same operations
again, older ones after newer ones, and deletes before late upserts. ``apply`` must
therefore be idempotent and version-guarded (last-writer-wins by ``Version``):

- an upsert or delete is applied only if its version is newer than the version the
  target holds for that key (a live row's, or a tombstone's);
- an equal version is a ``DUPLICATE`` (nothing written), an older one ``OLDER``;
- a delete leaves a tombstone, so a later-arriving older upsert cannot resurrect the row;
- fields in ``EntityUpsert.unavailable`` are left untouched in the target;
- the check and the write are atomic per key, also against another process applying the
  same keys (a replay beside the live worker): a transaction with per-key locks, or the
  target's own conditional write. The rules themselves are ``mappers.lww``.
- an operation with an ``echo_token`` echoes a write the integration made itself
  (inbound): a sink that keeps what it last delivered per key skips it as ``ECHO`` when
  ``mappers.lww.echo_held`` says the target still holds that write; any other sink
  applies it like any operation (the target then holds the same row, versioned).

Errors: a transient failure of the target (connection lost, timeout, 429, 5xx) raises
``SinkUnavailable`` for the whole call; some operations may already be applied, which
is harmless because retrying them yields ``DUPLICATE``. A permanent refusal of one
operation (a 4xx, a constraint violation) is returned in that operation's slot as a
``SinkRejected`` and must not stop the others.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from cdc.core.errors import SinkRejected
from mappers.entity import EntityOp


class Outcome(enum.Enum):
    """What applying one operation did."""

    APPLIED = "applied"
    OLDER = "older"
    DUPLICATE = "duplicate"
    ECHO = "echo"  # the target's own write, which it still holds: not sent back


Result = Outcome | SinkRejected


class Sink(Protocol):
    """An external system that entities are written to. See the module docstring."""

    name: str

    async def start(self) -> None:
        """Connect and prepare (create tables or state) before the first ``apply``."""

    async def apply(self, ops: Sequence[EntityOp]) -> list[Result]:
        """Apply ``ops`` in order; one result per operation, in the same order.

        Operations on the same key come in the order they were captured; a sink may
        apply operations on different keys concurrently.
        """
        ...

    async def probe(self) -> None:
        """A cheap reachability check; raises ``SinkUnavailable`` when the target is down."""

    async def holding(self, entity: str, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` the target holds a live ``entity`` of (its last applied
        operation was an upsert). Asked only before an upsert that leaves fields out
        (unchanged TOAST values): one that creates the entity must have them filled."""
        ...

    async def close(self) -> None:
        """Release connections; ``apply`` is not called afterwards."""
