"""The source database's checks: wal_level, privileges, tables, publication, slot, headroom.

They reuse the read-only look-ups of ``cdc.capture.source_setup``, which capture runs at
start. Invariant: they only read; a slot or publication that capture would create is a
warning, never created here.
"""

from __future__ import annotations

from typing import Any

import psycopg

from cdc.capture import source_setup as source
from cdc.config import Config
from cdc.core.secrets import redact_dsn
from cdc.ops.check.report import Finding, bounded, pg_connect, pg_reason

__all__ = ["check_source"]

MiB = 1024 * 1024


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
