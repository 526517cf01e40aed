"""Last-writer-wins, as pure rules: which clock versions a write, and what a target keeps.

Two clocks exist, and no rule ever compares one with the other:

- **The source's commit order** (``Version``: commit LSN, then the position in the
  transaction). It orders every change made in the source, whoever made it: an insert,
  an update, a delete (whatever its before-image holds), a re-insert of the same key in the
  same transaction, a write applied by inbound, a snapshot read (positioned at its high
  watermark's commit, which follows every change the read saw and precedes every change
  it did not). It is the only clock targets see: ``source_version``.
- **The inbound clock** (a ``version_column`` such as ``updated_at``, against the
  ``version_field`` of a change an external system posts). It decides only whether an
  inbound write is newer than the row it would replace in the source: ``inbound_wins``.
  Once applied, that write is a change of the source like any other and reaches targets
  versioned by its commit, never by the column's value.

Why never compared: a column's value is set by whoever wrote the row (``DEFAULT now()``
is the transaction's start, an application may write any time, an external system's
clock may run ahead), so it can put a later commit before an earlier one. The source's
state is the result of its commit order; a target that followed the column instead would
keep a write the source has since replaced (a delete, then a re-insert in one
transaction; an update after a future-dated inbound write).

Ties: two different source changes never share a ``Version`` (a commit LSN belongs to one
transaction, a position to one change in it), so an equal version is the same change
delivered again: a no-op. In the inbound clock an equal value loses (the row already holds
a write of that instant; applying again must change nothing).

Echoes: a write applied by inbound reaches the targets of the other integrations like any
change. The integration it came from holds it already, unless a write of ours reached that
system after it made its change (its edit was made on an older row, then our delivery of
a newer row replaced the edit there while the database kept the edit). The external system
says which of our versions it held when it made the change (its *base*), the apply step
stores a digest of it in the transaction's replication-origin LSN (``echo_token``), and the
sink skips the echo only if the version it last delivered for the key is still that base
(``echo_held``); otherwise the echo is delivered like any change and the external system
ends with the database's row. Without a base (token 0) the echo is never sent: sending it
could create the entity twice there (a create made in that system has no key of ours yet).

What a target keeps per key is ``Held`` (the newest version applied and whether it was a
delete, i.e. a tombstone). ``decide`` and ``step`` are the whole sink rule: whatever order,
duplication or replay the deliveries of a key's operations come in, the key ends holding
the operation with the greatest version (``converged``), which is the source's last write.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from mappers.entity import EntityDelete, EntityOp, Version

__all__ = [
    "Held",
    "Verdict",
    "converged",
    "decide",
    "echo_held",
    "echo_token",
    "inbound_wins",
    "snapshot_version",
    "source_version",
    "step",
]


class Verdict(enum.Enum):
    """What a target does with an operation, given what it holds for the key."""

    APPLY = "apply"
    DUPLICATE = "duplicate"
    OLDER = "older"


@dataclass(frozen=True, slots=True)
class Held:
    """What a target holds for one key: the newest applied version, and if it deleted."""

    version: Version
    deleted: bool


def source_version(commit_lsn: int, seq: int) -> Version:
    """The version of a change made in the source: its commit LSN, then its position."""
    return Version.from_lsn(commit_lsn, seq)


def snapshot_version(high_watermark_lsn: int, seq: int) -> Version:
    """A snapshot read's version: the commit LSN of the high watermark it is published at.

    Every change the read saw committed before the watermark (smaller versions); every
    change it did not see commits after it or dropped the read, so the read sits in the
    stream's order like the change that would have produced that row then.
    """
    return Version.from_lsn(high_watermark_lsn, seq)


def decide(held: Version | None, incoming: Version) -> Verdict:
    """Apply only what is newer than the held version; equal is the same change again."""
    if held is None or incoming > held:
        return Verdict.APPLY
    return Verdict.DUPLICATE if incoming == held else Verdict.OLDER


def step(held: Held | None, op: EntityOp) -> tuple[Verdict, Held | None]:
    """One delivery of ``op`` to a target holding ``held``: the verdict and what it holds next."""
    verdict = decide(None if held is None else held.version, op.version)
    if verdict is not Verdict.APPLY:
        return verdict, held
    return verdict, Held(op.version, isinstance(op, EntityDelete))


def converged(ops: Iterable[EntityOp]) -> EntityOp | None:
    """The operation a key ends with, whatever the delivery order: the greatest version."""
    return max(ops, key=lambda op: op.version, default=None)


def inbound_wins(held_us: int | None, incoming_us: int) -> bool:
    """The inbound clock: an external write replaces a row only if strictly newer.

    ``held_us`` is the row's version column (None: the row has no value there), both in
    the column's unit (microseconds for temporal columns). Equal loses.
    """
    return held_us is None or incoming_us > held_us


def echo_token(base: bytes | None) -> int:
    """The token an inbound write carries for its base (0: unknown).

    ``base`` is the ``Version.to_bytes()`` of the last write the external system had from
    us when it made the change (``b""``: none yet). A 63-bit digest, never 0, so it fits a
    replication origin's LSN and equal tokens mean equal bases (collisions aside: 2**-63).
    """
    if base is None:
        return 0
    digest = hashlib.blake2b(b"cdcsync.echo\0" + base, digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


def echo_held(token: int, delivered: Version | None) -> bool:
    """Whether the external system still holds its own write: our last delivery to it for
    the key (``delivered``, None: nothing yet) is the base its change was made on."""
    if token == 0:
        return True  # the sender did not say: assume it holds its write
    return token == echo_token(b"" if delivered is None else delivered.to_bytes())
