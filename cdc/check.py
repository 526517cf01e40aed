"""``cdcsync check``: is this configuration ready to run? Everything it needs, in plain words.

``run_checks(config)`` connects to every server the configuration names and returns a
``CheckReport``: one ``Finding`` per check, each ``ok``, ``warning`` or ``problem``, with a
sentence that names the thing checked (the table, the slot, the integration) and, for a
problem, what to do. The source database's checks live here (they reuse the read-only
look-ups of ``cdc.source``, which capture runs at start); Kafka, the registry, the state
store, the sinks and the inbound side (table columns, replication origins) are in
``cdc.check_services``.

Severity: a *problem* is something that stops cdcsync from running or from capturing
correctly (wal_level, privilege, a missing table, an unusable slot, an unreachable server);
a *warning* is something it runs with but an operator should know (a slot or publication or
topic that capture will create, a replica identity that loses data, a slot in use, WAL
retained above the warning limit). ``CheckReport.exit_code`` is 1 when there is a problem,
0 otherwise; an invalid configuration never gets this far (``ConfigError``, exit 2).

Invariants:
- Nothing here writes anywhere: no slot, publication, topic, schema or table is created.
- No secret (DSN password, token, HMAC secret, secret property) appears in a finding:
  DSNs and URLs are shown redacted, and every secret value of the configuration is
  scrubbed from every message before the report is returned.
- Every check has its own time limit; a server that does not answer is a problem, never
  a hang.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, SecretStr

from cdc import source
from cdc.config import Config
from cdc.errors import first_line
from cdc.secrets import is_secret_name, redact_dsn

__all__ = ["CheckReport", "Finding", "Status", "run_checks"]

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


async def run_checks(config: Config, *, timeout_s: float = 10.0) -> CheckReport:
    """Run every check (concurrently, each bounded by ``timeout_s``) and return the report."""
    from cdc import check_services  # noqa: PLC0415  (it imports this module's types)

    groups: list[tuple[str, str, Awaitable[list[Finding]]]] = [
        ("source", "the source database", check_source(config, timeout_s=timeout_s)),
        ("kafka", "Kafka", check_services.check_kafka(config, timeout_s=timeout_s)),
        ("registry", "the registry", check_services.check_registry(config, timeout_s=timeout_s)),
        ("state store", "the state store", check_services.check_state(config, timeout_s=timeout_s)),
        ("sinks", "the sinks", check_services.check_sinks(config, timeout_s=timeout_s)),
        ("inbound", "inbound", check_services.check_inbound(config, timeout_s=timeout_s)),
    ]
    # Each group bounds its own calls; this outer limit is only a safety net.
    results = await asyncio.gather(
        *(bounded(s, what, call, timeout_s=3 * timeout_s + 5) for s, what, call in groups)
    )
    findings = [f for group in results for f in group]
    return CheckReport(tuple(scrub(findings, secrets_of(config))))


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
            message = message.replace(secret, "***")
        yield Finding(f.subject, f.status, message)


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


# --------------------------------------------------------------------------- the source


async def check_source(config: Config, *, timeout_s: float) -> list[Finding]:
    src = config.source
    dsn = src.dsn.get_secret_value()
    shown = redact_dsn(dsn)
    try:
        conn = await pg_connect(dsn, timeout_s)
    except (psycopg.Error, TimeoutError) as exc:
        return [Finding.problem("source", f"cannot connect to {shown}: {pg_reason(exc)}")]
    async with conn:
        return await bounded(
            "source",
            f"the source database {shown}",
            _source_findings(conn, config, shown),
            timeout_s=timeout_s,
        )


async def _source_findings(
    conn: psycopg.AsyncConnection[Any], config: Config, shown: str
) -> list[Finding]:
    src = config.source
    cur = await conn.execute("SELECT current_database(), current_setting('server_version')")
    row = await cur.fetchone()
    assert row is not None
    database, version = str(row[0]), str(row[1]).split()[0]
    findings = [Finding.ok("source", f"connected to {shown} (PostgreSQL {version})")]

    level = await source.wal_level(conn)
    wal_problem = source.wal_level_problem(level)
    findings.append(
        Finding.problem("wal_level", wal_problem)
        if wal_problem
        else Finding.ok("wal_level", f"wal_level is {level!r}")
    )
    user, can_replicate = await source.replication_role(conn)
    role_problem = source.replication_problem(user, can_replicate)
    findings.append(
        Finding.problem("replication privilege", role_problem)
        if role_problem
        else Finding.ok("replication privilege", f"role {user!r} may replicate")
    )

    tables = [source.TableName.parse(t) for t in src.tables]
    for table in tables:
        findings.append(await _table_finding(conn, table))
    findings.extend(await _publication_findings(conn, config, tables))
    slot = await source.slot_facts(conn, src.slot)
    findings.append(_slot_finding(config, slot, database=database))
    findings.extend(await _headroom_findings(conn, slot))
    return findings


async def _table_finding(conn: psycopg.AsyncConnection[Any], table: source.TableName) -> Finding:
    subject = f"table {table}"
    facts = await source.table_facts(conn, table)
    if facts is None:
        return Finding.problem(
            subject, f"{table} does not exist in the source database (listed in source.tables)"
        )
    if not facts.is_table:
        return Finding.problem(subject, f"{table} is not a table (relkind {facts.relkind!r})")
    warning = source.replica_identity_warning(table, facts)
    if warning is not None:
        return Finding.warning(subject, warning)
    if not facts.has_primary_key:
        return Finding.warning(
            subject,
            f"{table} has no primary key: REPLICA IDENTITY FULL keeps updates and deletes "
            "whole, but its events carry no key (no per-key order across partitions, "
            "no compaction)",
        )
    identity = _IDENTITY_NAMES.get(facts.replica_identity, facts.replica_identity)
    return Finding.ok(subject, f"{table} has a primary key, REPLICA IDENTITY {identity}")


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB"


_IDENTITY_NAMES = {"d": "DEFAULT", "f": "FULL", "i": "USING INDEX", "n": "NOTHING"}


async def _publication_findings(
    conn: psycopg.AsyncConnection[Any], config: Config, tables: list[source.TableName]
) -> list[Finding]:
    src = config.source
    name = src.publication
    subject = "publication"
    present = await source.publication_tables(conn, name)
    listed = ", ".join(map(str, tables))
    if present is None:
        if src.create_publication:
            return [
                Finding.warning(
                    subject,
                    f"publication {name!r} does not exist: capture will create it for {listed}",
                )
            ]
        return [
            Finding.problem(
                subject,
                f"publication {name!r} does not exist and source.create_publication is false: "
                f"CREATE PUBLICATION {name} FOR TABLE {listed}",
            )
        ]
    findings: list[Finding] = []
    missing = [t for t in tables if t not in present]
    extra = sorted(map(str, present - set(tables)))
    held = ", ".join(sorted(map(str, present))) or "no table"
    if missing:
        lacking = ", ".join(map(str, missing))
        if src.create_publication:
            findings.append(
                Finding.warning(
                    subject,
                    f"publication {name!r} holds {held} but lacks {lacking}: capture will add it",
                )
            )
        else:
            findings.append(
                Finding.problem(
                    subject,
                    f"publication {name!r} holds {held} but lacks {lacking} and "
                    f"source.create_publication is false: "
                    f"ALTER PUBLICATION {name} ADD TABLE {lacking}",
                )
            )
    else:
        findings.append(Finding.ok(subject, f"publication {name!r} holds {held}"))
    if extra:
        findings.append(
            Finding.warning(
                subject,
                f"publication {name!r} also holds {', '.join(extra)}, not in source.tables: "
                "their changes are captured and published too",
            )
        )
    return findings


def _slot_finding(config: Config, slot: source.SlotFacts | None, *, database: str) -> Finding:
    src = config.source
    name = src.slot
    subject = "slot"
    if slot is None:
        if src.create_slot:
            return Finding.warning(
                subject,
                f"replication slot {name!r} does not exist: capture will create it "
                "(changes before that are not captured)",
            )
        return Finding.problem(
            subject, f"replication slot {name!r} does not exist and source.create_slot is false"
        )
    mismatch = source.slot_mismatch(name, slot, database=database)
    if mismatch is not None:
        return Finding.problem(subject, mismatch)
    if slot.wal_status == "lost":
        return Finding.problem(
            subject,
            f"replication slot {name!r} has lost WAL it still needed (wal_status 'lost'): "
            "changes are missing; drop the slot and take a new snapshot",
        )
    retained = slot.retained_bytes or 0
    facts = (
        f"replication slot {name!r} (pgoutput) confirmed up to {slot.confirmed_flush}, "
        f"retains {_size(retained)} of WAL"
    )
    stop, warn = src.slot_lag_stop_bytes, src.slot_lag_warn_bytes
    if stop is not None and retained > stop:
        return Finding.problem(
            subject,
            f"{facts}, above source.slot_lag_stop_bytes ({stop:,} bytes): capture would stop "
            "at once; find why it fell behind, or raise the limit",
        )
    if warn is not None and retained > warn:
        return Finding.warning(
            subject, f"{facts}, above source.slot_lag_warn_bytes ({warn:,} bytes)"
        )
    if slot.active_pid is not None:
        return Finding.warning(
            subject,
            f"{facts}; it is in use by pid {slot.active_pid} (a running capture?): "
            "another capture cannot start while it is",
        )
    return Finding.ok(subject, facts)


async def _headroom_findings(
    conn: psycopg.AsyncConnection[Any], slot: source.SlotFacts | None
) -> list[Finding]:
    cur = await conn.execute(
        "SELECT current_setting('max_replication_slots')::int,"
        " (SELECT count(*) FROM pg_replication_slots),"
        " current_setting('max_wal_senders')::int,"
        " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')"
    )
    row = await cur.fetchone()
    assert row is not None
    max_slots, used_slots, max_senders, used_senders = (int(v) for v in row)
    findings: list[Finding] = []
    need_slot = 1 if slot is None else 0
    slots = f"{used_slots} of max_replication_slots = {max_slots} in use"
    if max_slots - used_slots < need_slot:
        findings.append(
            Finding.problem(
                "slot headroom",
                f"no free replication slot for capture ({slots}): raise max_replication_slots "
                "(restart) or drop an unused slot",
            )
        )
    else:
        findings.append(Finding.ok("slot headroom", slots))
    need_sender = 0 if slot is not None and slot.active_pid is not None else 1
    senders = f"{used_senders} of max_wal_senders = {max_senders} in use"
    if max_senders - used_senders < need_sender:
        findings.append(
            Finding.problem(
                "wal senders",
                f"no free WAL sender for capture's replication connection ({senders}): "
                "raise max_wal_senders (restart)",
            )
        )
    else:
        findings.append(Finding.ok("wal senders", senders))
    return findings
