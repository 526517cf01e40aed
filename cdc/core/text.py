"""Text that any store accepts: what a poisoned record's key and error become when recorded.

A record that could not be applied is recorded with its key and the reason (dead letters,
logs). Both come from outside (a request path, a mapper's message quoting a value) and may
hold what PostgreSQL text refuses (NUL) or what UTF-8 cannot encode (lone surrogates).

Invariants: ``storable`` and ``key_text`` never raise, their results encode as UTF-8 and
hold no NUL, and text that needed no change is returned as it was (so ordinary keys and
errors read the same as before).
"""

from __future__ import annotations

__all__ = ["key_text", "storable"]


def storable(text: str) -> str:
    """``text`` with NUL written ``\\x00`` and unencodable characters as escapes."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode(errors="backslashreplace").decode()
    return text


def key_text(raw: bytes | str | None) -> str | None:
    """A record key as storable text: UTF-8 when it is, escapes for the other bytes."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return storable(raw)
    return storable(bytes(raw).decode(errors="backslashreplace"))
