"""The ``Lsn`` value type: a PostgreSQL write-ahead-log position.

Invariants: an ``Lsn`` is an unsigned 64-bit integer, immutable, totally
ordered, and round-trips through its text form ``"XXXXXXXX/XXXXXXXX"``
(``Lsn.parse(str(lsn)) == lsn``).
"""

from __future__ import annotations

from typing import Final

_MAX: Final = (1 << 64) - 1


class Lsn(int):
    """A WAL position; ``int`` subclass so that arithmetic and comparisons are free."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Lsn:
        if not 0 <= value <= _MAX:
            raise ValueError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse PostgreSQL's ``"16/B374D848"`` form."""
        hi, sep, lo = text.strip().partition("/")
        if not sep or not hi or not lo:
            raise ValueError(f"not an LSN: {text!r}")
        try:
            high, low = int(hi, 16), int(lo, 16)
        except ValueError:
            raise ValueError(f"not an LSN: {text!r}") from None
        if not 0 <= high <= 0xFFFFFFFF or not 0 <= low <= 0xFFFFFFFF:
            raise ValueError(f"not an LSN: {text!r}")
        return cls((high << 32) | low)

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn({str(self)!r})"


ZERO: Final = Lsn(0)
