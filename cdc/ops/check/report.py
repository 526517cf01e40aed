"""What ``cdcsync check`` reports, and the helpers every check shares.

A ``CheckReport`` holds one ``Finding`` per check, each ``ok``, ``warning`` or
``problem``, with a sentence that names the thing checked (the table, the slot, the
integration) and, for a problem, what to do. Severity: a *problem* is something that stops
cdcsync from running or from capturing correctly (wal_level, privilege, a missing table, an
unusable slot, an unreachable server); a *warning* is something it runs with but an
operator should know. ``CheckReport.exit_code`` is 1 when there is a problem, 0 otherwise;
an invalid configuration never gets this far (``ConfigError``, exit 2).

Invariants:
- No secret (DSN password, token, HMAC secret, secret property) appears in a finding:
  ``scrub`` replaces every secret value of the configuration and every DSN password.
- ``bounded`` gives every check its own time limit; a server that does not answer is a
  problem, never a hang, and an unforeseen failure is a problem finding, never swallowed.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import re
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, SecretStr

from cdc.core.errors import first_line
from cdc.core.secrets import is_secret_name, redact_dsn

__all__ = [
    "CheckReport",
    "Finding",
    "Status",
    "bounded",
    "pg_connect",
    "pg_reason",
    "scrub",
    "secrets_of",
]

MiB = 1024 * 1024


class Status(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check: what was checked (``subject``), how it went, and why."""

    subject: str
    status: Status
    message: str

    @classmethod
    def ok(cls, subject: str, message: str) -> Finding:
        return cls(subject, Status.OK, message)

    @classmethod
    def warning(cls, subject: str, message: str) -> Finding:
        return cls(subject, Status.WARNING, message)

    @classmethod
    def problem(cls, subject: str, message: str) -> Finding:
        return cls(subject, Status.PROBLEM, message)

    def line(self) -> str:
        return f"{self.status.value:<8} {self.subject}: {self.message}"


@dataclass(frozen=True, slots=True)
class CheckReport:
    """All findings, in a stable order (source, Kafka, registry, state store, sinks)."""

    findings: tuple[Finding, ...]

    def count(self, status: Status) -> int:
        return sum(1 for f in self.findings if f.status is status)

    @property
    def blocking(self) -> bool:
        return self.count(Status.PROBLEM) > 0

    @property
    def exit_code(self) -> int:
        return 1 if self.blocking else 0

    def summary(self) -> str:
        problems, warnings = self.count(Status.PROBLEM), self.count(Status.WARNING)
        counts = f"{_plural(problems, 'problem')}, {_plural(warnings, 'warning')}"
        if problems:
            return f"{counts}: cdcsync cannot run as configured until the problems are fixed"
        return f"{counts}: ready to run"

    def render_text(self) -> str:
        return "\n".join([*(f.line() for f in self.findings), self.summary()]) + "\n"

    def render_json(self) -> str:
        return json.dumps(
            {
                "ok": not self.blocking,
                "exit_code": self.exit_code,
                "problems": self.count(Status.PROBLEM),
                "warnings": self.count(Status.WARNING),
                "checks": [
                    {"subject": f.subject, "status": f.status.value, "message": f.message}
                    for f in self.findings
                ],
            },
            indent=2,
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def secrets_of(model: BaseModel) -> list[str]:
    """Every secret value held anywhere in ``model`` (revealed: use only to scrub text)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            revealed = value.get_secret_value()
            if revealed:
                found.append(revealed)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(model)
    parts = {part for value in found for part in _hidden_parts(value)}
    return sorted(parts, key=len, reverse=True)


def _hidden_parts(value: str) -> list[str]:
    """What of a secret value must never be shown: a DSN's password, else the whole value.

    A DSN as a whole is a secret because it may hold a password, but it is shown redacted
    (``redact_dsn``), so only its password (and secret parameters) are scrubbed.
    """
    if "://" not in value and "=" not in value:
        return [value]
    try:
        params = conninfo_to_dict(value)
    except psycopg.Error:
        return [value]
    return [str(v) for k, v in params.items() if v and (k == "password" or is_secret_name(k))]


def scrub(findings: Iterable[Finding], secrets: list[str]) -> Iterator[Finding]:
    """``findings`` with any secret value (and any DSN password) replaced by ``***``."""
    for f in findings:
        message = redact_dsn(f.message)
        for secret in secrets:
            message = _hide(message, secret)
        yield Finding(f.subject, f.status, message)


# A secret shorter than this is hidden only where it stands alone (not inside a word):
# a one-letter password ``y`` must not turn "mysql" into "m***sql".
_WHOLE_WORD_BELOW = 8


def _hide(message: str, secret: str) -> str:
    if not secret:
        return message
    if len(secret) >= _WHOLE_WORD_BELOW:
        return message.replace(secret, "***")
    alone = re.compile(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])")
    return alone.sub("***", message)


async def bounded(
    subject: str, what: str, call: Awaitable[list[Finding]], *, timeout_s: float
) -> list[Finding]:
    """``call``'s findings, or a problem saying ``what`` did not answer or failed.

    A check that fails in an unforeseen way (a catalog query refused, a connection cut
    half-way) becomes a problem finding: the report is always complete.
    """
    try:
        return await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        return [Finding.problem(subject, f"{what} did not answer within {timeout_s:g} s")]
    except Exception as exc:  # reported as a problem, never swallowed
        return [
            Finding.problem(
                subject, f"checking {what} failed: {type(exc).__name__}: {first_line(exc)}"
            )
        ]


async def pg_connect(dsn: str, timeout_s: float) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection, or ``psycopg.Error`` / ``TimeoutError`` within the limit."""
    return await asyncio.wait_for(
        psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=max(1, math.ceil(timeout_s))
        ),
        timeout_s + 1,
    )


def pg_reason(exc: BaseException) -> str:
    """Why a connection failed, in one line."""
    return first_line(exc) if isinstance(exc, psycopg.Error) else "no answer"
