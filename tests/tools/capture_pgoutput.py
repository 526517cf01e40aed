"""Regenerate the captured pgoutput fixtures in tests/fixtures/pgoutput/ from a real server.

Usage (from the repository root)::

    .venv/bin/python -m tests.tools.capture_pgoutput [OUTPUT_DIR]

It starts a throwaway PostgreSQL (``cdc.demo.throwaway.LocalPostgres``) with
``logical_decoding_work_mem = 64kB`` so that large transactions are streamed,
and records one fixture per scenario. For each scenario it creates the tables,
then a replication slot, runs the workload, emits a non-transactional end
marker message, reads the slot with ``START_REPLICATION`` (psycopg replication
connection, COPY_BOTH) and keeps every XLogData payload before the marker.

Files written per scenario NAME:

* ``NAME.bin.gz``: gzip of the payloads, each framed as a big-endian
  unsigned 32-bit length followed by that many bytes;
* ``NAME.json``: the START_REPLICATION options and what the stream must
  contain, built from what the workload wrote (``RETURNING`` rows read in
  text form, transaction ids, start timestamps, relation catalogs).

Expected values in the JSON: a string is a text value, ``null`` a NULL,
``{"hex": ...}`` a binary value, ``{"unchanged": true}`` an unchanged TOASTed
value. A change ``{"op": "insert_series", "first": a, "last": b, "label":
"row-{}"}`` stands for inserts of ``(i, label.format(i))`` for i in a..b.

Invariant: the fixtures depend only on this script and the server's version
(PostgreSQL 15); rerunning it rewrites them with fresh xids and LSNs and the
tests still pass.
"""

from __future__ import annotations

import gzip
import json
import select
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from cdc.capture.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputMessage,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
    Update,
    Value,
)
from cdc.demo.throwaway import LocalPostgres

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "pgoutput"
END_PREFIX = "cdcsync-capture-end"
PG_EPOCH_OFFSET_US = 946_684_800_000_000

Json = dict[str, Any]


# --- reading a slot ---------------------------------------------------------


def _status_update(lsn: int) -> bytes:
    now_us = time.time_ns() // 1000 - PG_EPOCH_OFFSET_US
    return b"r" + struct.pack(">QQQqB", lsn, lsn, lsn, now_us, 0)


def read_payloads(
    dsn: str, slot: str, options: dict[str, str], *, until_prefix: str, timeout: float = 60.0
) -> list[bytes]:
    """Stream ``slot`` from its start; return the XLogData payloads before the end marker.

    The end marker is a non-transactional logical message whose prefix is
    ``until_prefix``; it is not included.
    """
    wanted = until_prefix.encode() + b"\x00"
    opts = ", ".join(f"{key} '{value}'" for key, value in options.items())
    payloads: list[bytes] = []
    conn = psycopg.connect(dsn, replication="database", autocommit=True)
    try:
        conn.execute(f"START_REPLICATION SLOT {slot} LOGICAL 0/0 ({opts})")
        pgconn = conn.pgconn
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no end marker {until_prefix!r} on slot {slot}")
            size, buf = pgconn.get_copy_data(1)
            if size == 0:
                select.select([pgconn.socket], [], [], 1.0)
                pgconn.consume_input()
                continue
            if size < 0:
                raise RuntimeError(f"replication stream on {slot} ended unexpectedly")
            data = bytes(buf)
            if data[:1] == b"k":
                end, _server_us, reply = struct.unpack_from(">QqB", data, 1)
                if reply:
                    pgconn.put_copy_data(_status_update(end))
                    pgconn.flush()
            elif data[:1] == b"w":
                payload = data[25:]
                # 'M', flags 0 (non-transactional), Int64 LSN, then the prefix
                if payload[:2] == b"M\x00" and payload[10:].startswith(wanted):
                    return payloads
                payloads.append(payload)
    finally:
        conn.close()


def frame(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in payloads)


def unframe(data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        yield data[pos + 4 : pos + 4 + size]
        pos += 4 + size


# --- reading fixtures back: the decoded stream in the JSON vocabulary --------------


def load_fixture(name: str, directory: Path = FIXTURE_DIR) -> tuple[list[bytes], Json]:
    """The captured payloads of scenario ``name`` and its expected-values sidecar."""
    payloads = list(unframe(gzip.decompress((directory / f"{name}.bin.gz").read_bytes())))
    expected = json.loads((directory / f"{name}.json").read_text())
    return payloads, expected


def as_json(value: Value) -> Any:
    """A decoded column value in the sidecar's vocabulary."""
    if value is UNCHANGED:
        return {"unchanged": True}
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return value


def expand_expected(units: list[Json]) -> list[Json]:
    """The expected units with ``insert_series`` shorthands expanded and start times dropped."""
    result = []
    for original in units:
        unit = {k: v for k, v in original.items() if k != "start_us"}
        if "changes" in unit:
            changes: list[Json] = []
            for change in unit["changes"]:
                if change["op"] == "insert_series":
                    label = change["label"]
                    changes.extend(
                        {"op": "insert", "table": change["table"], "new": [str(i), label.format(i)]}
                        for i in range(change["first"], change["last"] + 1)
                    )
                else:
                    changes.append(change)
            unit["changes"] = changes
        result.append(unit)
    return result


def decoded_units(messages: list[PgOutputMessage], decoder: Decoder) -> list[Json]:
    """Group decoded messages into units (transactions, bare messages) as they complete.

    A transaction's changes are listed in the sidecar's vocabulary; changes of
    a subtransaction aborted by a Stream Abort are dropped, as a consumer must.
    Every unit also carries the decoded end messages under ``_end``.
    """
    relations: dict[int, str] = {}
    open_txns: dict[int, list[tuple[int | None, Json]]] = {}
    current: list[tuple[int | None, Json]] | None = None
    units: list[Json] = []
    begin: Begin | None = None
    stream_xid: int | None = None
    for msg in messages:
        if isinstance(msg, Relation):
            relations[msg.oid] = f"{msg.namespace}.{msg.name}"
        elif isinstance(msg, Begin):
            begin, current = msg, []
        elif isinstance(msg, Commit):
            assert begin is not None
            assert current is not None
            units.append(
                {
                    "kind": "transaction",
                    "xid": begin.xid,
                    "streamed": False,
                    "outcome": "commit",
                    "changes": [c for _, c in current],
                    "_end": (begin, msg),
                }
            )
            begin = current = None
        elif isinstance(msg, StreamStart):
            stream_xid = msg.xid
            current = open_txns.setdefault(msg.xid, [])
        elif isinstance(msg, StreamStop):
            stream_xid, current = None, None
        elif isinstance(msg, StreamCommit):
            changes = open_txns.pop(msg.xid)
            units.append(
                {
                    "kind": "transaction",
                    "xid": msg.xid,
                    "streamed": True,
                    "outcome": "commit",
                    "changes": [c for _, c in changes],
                    "_end": msg,
                }
            )
        elif isinstance(msg, StreamAbort):
            if msg.subxid == msg.xid:
                open_txns.pop(msg.xid)
                units.append(
                    {
                        "kind": "transaction",
                        "xid": msg.xid,
                        "streamed": True,
                        "outcome": "abort",
                        "changes": [],
                        "_end": msg,
                    }
                )
            else:
                open_txns[msg.xid] = [(x, c) for x, c in open_txns[msg.xid] if x != msg.subxid]
        elif isinstance(msg, LogicalMessage) and not msg.transactional and current is None:
            units.append(
                {
                    "kind": "message",
                    "transactional": False,
                    "prefix": msg.prefix,
                    "content_hex": msg.content.hex(),
                    "_end": msg,
                }
            )
        elif isinstance(msg, TypeInfo | Origin):
            continue
        else:
            assert current is not None, f"{msg!r} outside a transaction"
            xid = getattr(msg, "xid", None)
            assert (xid is not None) == (stream_xid is not None), msg
            current.append((xid, _change(msg, relations)))
    return units


def _change(msg: PgOutputMessage, relations: dict[int, str]) -> Json:
    if isinstance(msg, Insert):
        return {
            "op": "insert",
            "table": relations[msg.relation_oid],
            "new": [as_json(v) for v in msg.new],
        }
    if isinstance(msg, Update):
        kind = None if msg.old is None else "K" if msg.old_is_key else "O"
        old = None if msg.old is None else [as_json(v) for v in msg.old]
        return {
            "op": "update",
            "table": relations[msg.relation_oid],
            "old": old,
            "old_kind": kind,
            "new": [as_json(v) for v in msg.new],
        }
    if isinstance(msg, Delete):
        return {
            "op": "delete",
            "table": relations[msg.relation_oid],
            "old": [as_json(v) for v in msg.old],
            "old_kind": "K" if msg.old_is_key else "O",
        }
    if isinstance(msg, Truncate):
        return {
            "op": "truncate",
            "tables": [relations[o] for o in msg.relation_oids],
            "cascade": msg.cascade,
            "restart_identity": msg.restart_identity,
        }
    if isinstance(msg, LogicalMessage):
        return {
            "op": "message",
            "transactional": msg.transactional,
            "prefix": msg.prefix,
            "content_hex": msg.content.hex(),
        }
    raise AssertionError(f"unexpected message {msg!r}")


# --- workload helpers ---------------------------------------------------------


def text_rows(cur: psycopg.Cursor[Any]) -> list[list[str | None]]:
    """The rows of the last result exactly as the server's output functions wrote them."""
    res = cur.pgresult
    assert res is not None
    rows = []
    for row in range(res.ntuples):
        values: list[str | None] = []
        for col in range(res.nfields):
            raw = res.get_value(row, col)
            values.append(None if raw is None else bytes(raw).decode())
        rows.append(values)
    return rows


def returning(conn: psycopg.Connection[Any], query: str, params: Any = None) -> list[Any]:
    """Run a DML statement ending in ``RETURNING *``; the returned rows in text form."""
    with conn.cursor() as cur:
        cur.execute(query, params)
        return text_rows(cur)


def begin(conn: psycopg.Connection[Any]) -> Json:
    """Start a transaction; return its expected unit (xid, start time)."""
    conn.execute("BEGIN")
    row = conn.execute(
        "SELECT pg_current_xact_id()::text::bigint, (extract(epoch from now()) * 1000000)::bigint"
    ).fetchone()
    assert row is not None
    return {
        "kind": "transaction",
        "xid": row[0],
        "start_us": row[1],
        "streamed": False,
        "outcome": "commit",
        "changes": [],
    }


def relation_info(conn: psycopg.Connection[Any], table: str) -> Json:
    """The Relation message the server will send for ``table`` right now."""
    rows = conn.execute(
        """
        SELECT a.attname, a.atttypid::int, a.atttypmod,
               coalesce(a.attnum = ANY(i.indkey), false) OR c.relreplident = 'f'
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (table,),
    ).fetchall()
    ident = conn.execute(
        "SELECT relreplident::text FROM pg_class WHERE oid = %s::regclass", (table,)
    ).fetchone()
    assert ident is not None
    return {
        "table": table,
        "replica_identity": ident[0],
        "columns": [[name, oid, mod, bool(key)] for name, oid, mod, key in rows],
    }


def key_only(row: list[str | None], key_positions: set[int]) -> list[str | None]:
    return [v if i in key_positions else None for i, v in enumerate(row)]


# --- scenarios ------------------------------------------------------------------


def scenario_dml(conn: psycopg.Connection[Any]) -> Json:
    """Many types, NULLs, special values, key change, delete, DDL change, enum Type message."""
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    conn.execute("""
        CREATE TABLE all_types (
            id int PRIMARY KEY, i2 smallint, i8 bigint, num numeric(10,2), num_free numeric,
            r real, d double precision, b boolean, t text, vc varchar(20), ch char(3),
            by bytea, dt date, tm time, ts timestamp, tstz timestamptz, iv interval,
            u uuid, j json, jb jsonb, arr int[], tarr text[], m mood, ip inet, mo money)
    """)
    relations = [relation_info(conn, "public.all_types")]
    return {"setup_done": True, "relations": relations}


def workload_dml(conn: psycopg.Connection[Any], expected: Json) -> list[Json]:
    units = []
    txn = begin(conn)
    rows = returning(
        conn,
        """
        INSERT INTO all_types VALUES
        (1, 32767, 9223372036854775807, 12345678.91, 3.14159265358979323846, 1.5, 2.25, true,
         'plain', 'varchar', 'ab', '\\x00ff10', '2024-02-29', '23:59:59.999999',
         '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05.678901+02',
         '1 year 2 mons 3 days 04:05:06',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": {"c": null}}',
         '{1,2,NULL}', '{"x y","q\\"uote"}', 'happy', '192.168.0.1/24', '1234.56'),
        (2, -32768, -1, -0.01, 'NaN', 'Infinity', '-Infinity', false,
         'héllo ✓ 𝄞 tab	end', '', '  ', '\\x', '-infinity', '00:00', 'infinity', '-infinity',
         '-1 days', '00000000-0000-0000-0000-000000000000', '[]', '[]', '{}', '{}', 'sad',
         '::1', '-0.01'),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
        RETURNING *
    """,
    )
    txn["changes"] = [{"op": "insert", "table": "public.all_types", "new": r} for r in rows]
    conn.execute("COMMIT")
    units.append(txn)

    txn = begin(conn)
    (new1,) = returning(
        conn, "UPDATE all_types SET t = 'changed', num = 0 WHERE id = 1 RETURNING *"
    )
    (old2,) = returning(conn, "SELECT * FROM all_types WHERE id = 2")
    (new2,) = returning(conn, "UPDATE all_types SET id = 20 WHERE id = 2 RETURNING *")
    (old3,) = returning(conn, "DELETE FROM all_types WHERE id = 3 RETURNING *")
    txn["changes"] = [
        {"op": "update", "table": "public.all_types", "old": None, "old_kind": None, "new": new1},
        {
            "op": "update",
            "table": "public.all_types",
            "old": key_only(old2, {0}),
            "old_kind": "K",
            "new": new2,
        },
        {"op": "delete", "table": "public.all_types", "old": key_only(old3, {0}), "old_kind": "K"},
    ]
    conn.execute("COMMIT")
    units.append(txn)

    conn.execute("ALTER TABLE all_types ADD COLUMN extra varchar(7) DEFAULT 'dflt'")
    expected["relations"].append(relation_info(conn, "public.all_types"))
    txn = begin(conn)
    rows = returning(conn, "INSERT INTO all_types (id, t) VALUES (4, 'after ddl') RETURNING *")
    txn["changes"] = [{"op": "insert", "table": "public.all_types", "new": r} for r in rows]
    conn.execute("COMMIT")
    units.append(txn)
    return units


def scenario_replica_full(conn: psycopg.Connection[Any]) -> Json:
    conn.execute("CREATE TABLE full_ident (id int, name text, score numeric)")
    conn.execute("ALTER TABLE full_ident REPLICA IDENTITY FULL")
    return {"relations": [relation_info(conn, "public.full_ident")]}


def workload_replica_full(conn: psycopg.Connection[Any], expected: Json) -> list[Json]:
    txn = begin(conn)
    (ins,) = returning(conn, "INSERT INTO full_ident VALUES (1, 'one', 1.5) RETURNING *")
    (new,) = returning(conn, "UPDATE full_ident SET score = NULL, name = 'uno' RETURNING *")
    (gone,) = returning(conn, "DELETE FROM full_ident RETURNING *")
    txn["changes"] = [
        {"op": "insert", "table": "public.full_ident", "new": ins},
        {"op": "update", "table": "public.full_ident", "old": ins, "old_kind": "O", "new": new},
        {"op": "delete", "table": "public.full_ident", "old": gone, "old_kind": "O"},
    ]
    conn.execute("COMMIT")
    return [txn]


def scenario_toast(conn: psycopg.Connection[Any]) -> Json:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)")
    conn.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    return {"relations": [relation_info(conn, "public.docs")]}


def workload_toast(conn: psycopg.Connection[Any], expected: Json) -> list[Json]:
    body = "".join(f"line {i:05d} of a long document\n" for i in range(400))  # ~12 kB
    txn = begin(conn)
    (ins,) = returning(conn, "INSERT INTO docs VALUES (1, 'draft', %s) RETURNING *", (body,))
    conn.execute("COMMIT")
    txn["changes"] = [{"op": "insert", "table": "public.docs", "new": ins}]
    units = [txn]

    txn = begin(conn)
    (upd,) = returning(conn, "UPDATE docs SET title = 'final' WHERE id = 1 RETURNING *")
    (gone,) = returning(conn, "DELETE FROM docs WHERE id = 1 RETURNING *")
    conn.execute("COMMIT")
    txn["changes"] = [
        {
            "op": "update",
            "table": "public.docs",
            "old": None,
            "old_kind": None,
            "new": [upd[0], upd[1], {"unchanged": True}],
        },
        {"op": "delete", "table": "public.docs", "old": key_only(gone, {0}), "old_kind": "K"},
    ]
    units.append(txn)
    return units


def scenario_truncate(conn: psycopg.Connection[Any]) -> Json:
    conn.execute("CREATE TABLE parent (id serial PRIMARY KEY)")
    conn.execute("CREATE TABLE child (id serial PRIMARY KEY, parent_id int REFERENCES parent)")
    conn.execute("CREATE TABLE solo (id int PRIMARY KEY)")
    return {
        "relations": [
            relation_info(conn, t) for t in ("public.parent", "public.child", "public.solo")
        ]
    }


def workload_truncate(conn: psycopg.Connection[Any], expected: Json) -> list[Json]:
    txn = begin(conn)
    conn.execute("TRUNCATE parent RESTART IDENTITY CASCADE")
    conn.execute("COMMIT")
    txn["changes"] = [
        {
            "op": "truncate",
            "tables": ["public.parent", "public.child"],
            "cascade": True,
            "restart_identity": True,
        }
    ]
    units = [txn]
    txn = begin(conn)
    conn.execute("TRUNCATE solo")
    conn.execute("COMMIT")
    txn["changes"] = [
        {"op": "truncate", "tables": ["public.solo"], "cascade": False, "restart_identity": False}
    ]
    units.append(txn)
    return units


def scenario_messages(conn: psycopg.Connection[Any]) -> Json:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, note text)")
    return {"relations": [relation_info(conn, "public.notes")]}


def workload_messages(conn: psycopg.Connection[Any], expected: Json) -> list[Json]:
    txn = begin(conn)
    (ins,) = returning(conn, "INSERT INTO notes VALUES (1, 'n') RETURNING *")
    conn.execute("SELECT pg_logical_emit_message(true, 'app/audit', 'inserted note 1')")
    conn.execute("COMMIT")
    txn["changes"] = [
        {"op": "insert", "table": "public.notes", "new": ins},
        {
            "op": "message",
            "transactional": True,
            "prefix": "app/audit",
            "content_hex": b"inserted note 1".hex(),
        },
    ]
    conn.execute("SELECT pg_logical_emit_message(false, 'app/heartbeat', '\\x0001ff'::bytea)")
    return [
        txn,
        {
            "kind": "message",
            "transactional": False,
            "prefix": "app/heartbeat",
            "content_hex": "0001ff",
        },
    ]


def scenario_streaming(conn: psycopg.Connection[Any]) -> Json:
    conn.execute("CREATE TABLE bulk (id int PRIMARY KEY, label text)")
    return {"relations": [relation_info(conn, "public.bulk")]}


def _series(first: int, last: int) -> Json:
    return {
        "op": "insert_series",
        "table": "public.bulk",
        "first": first,
        "last": last,
        "label": "row-{}",
    }


def _insert_series(conn: psycopg.Connection[Any], first: int, last: int) -> None:
    conn.execute(
        "INSERT INTO bulk SELECT i, 'row-' || i FROM generate_series(%s::int, %s::int) i",
        (first, last),
    )


def workload_streaming(conn: psycopg.Connection[Any], expected: Json) -> list[Json]:
    units = []
    txn = begin(conn)  # large committed transaction: streamed in several blocks
    _insert_series(conn, 1, 1500)
    conn.execute("COMMIT")
    txn.update(streamed=True, changes=[_series(1, 1500)])
    units.append(txn)

    txn = begin(conn)  # large aborted transaction: streamed, then Stream Abort
    _insert_series(conn, 10001, 10800)
    conn.execute("ROLLBACK")
    txn.update(streamed=True, outcome="abort", changes=[])
    units.append(txn)

    txn = begin(conn)  # a rolled-back subtransaction inside a streamed transaction
    _insert_series(conn, 20001, 20300)
    conn.execute("SAVEPOINT s")
    _insert_series(conn, 30001, 30800)
    conn.execute("ROLLBACK TO SAVEPOINT s")
    _insert_series(conn, 20301, 20600)
    conn.execute("COMMIT")
    txn.update(streamed=True, changes=[_series(20001, 20600)])
    units.append(txn)

    txn = begin(conn)  # a small transaction after them is sent whole
    _insert_series(conn, 40001, 40001)
    conn.execute("COMMIT")
    txn["changes"] = [_series(40001, 40001)]
    units.append(txn)
    return units


def scenario_binary(conn: psycopg.Connection[Any]) -> Json:
    conn.execute("CREATE TABLE bin_t (id int PRIMARY KEY, name text, flag boolean, big bigint)")
    return {"relations": [relation_info(conn, "public.bin_t")]}


def workload_binary(conn: psycopg.Connection[Any], expected: Json) -> list[Json]:
    txn = begin(conn)
    conn.execute("INSERT INTO bin_t VALUES (7, 'bin', true, -2), (8, NULL, false, 0)")
    conn.execute("COMMIT")

    def row(i: int, name: str | None, flag: bool, big: int) -> list[Any]:
        return [
            {"hex": struct.pack(">i", i).hex()},
            None if name is None else {"hex": name.encode().hex()},
            {"hex": bytes([flag]).hex()},
            {"hex": struct.pack(">q", big).hex()},
        ]

    txn["changes"] = [
        {"op": "insert", "table": "public.bin_t", "new": row(7, "bin", True, -2)},
        {"op": "insert", "table": "public.bin_t", "new": row(8, None, False, 0)},
    ]
    return [txn]


def scenario_proto_v1(conn: psycopg.Connection[Any]) -> Json:
    conn.execute("CREATE TABLE v1_t (id int PRIMARY KEY, name text)")
    return {"relations": [relation_info(conn, "public.v1_t")]}


def workload_proto_v1(conn: psycopg.Connection[Any], expected: Json) -> list[Json]:
    txn = begin(conn)
    rows = returning(conn, "INSERT INTO v1_t VALUES (1, 'a'), (2, 'b') RETURNING *")
    (gone,) = returning(conn, "DELETE FROM v1_t WHERE id = 1 RETURNING *")
    conn.execute("COMMIT")
    txn["changes"] = [
        *({"op": "insert", "table": "public.v1_t", "new": r} for r in rows),
        {"op": "delete", "table": "public.v1_t", "old": key_only(gone, {0}), "old_kind": "K"},
    ]
    return [txn]


Setup = Callable[[psycopg.Connection[Any]], Json]
Workload = Callable[[psycopg.Connection[Any], Json], list[Json]]

_V2 = {"proto_version": "2", "publication_names": "cdc_all", "messages": "true"}
SCENARIOS: dict[str, tuple[dict[str, str], Setup, Workload]] = {
    "dml": (_V2, scenario_dml, workload_dml),
    "replica_full": (_V2, scenario_replica_full, workload_replica_full),
    "toast": (_V2, scenario_toast, workload_toast),
    "truncate": (_V2, scenario_truncate, workload_truncate),
    "messages": (_V2, scenario_messages, workload_messages),
    "streaming": ({**_V2, "streaming": "on"}, scenario_streaming, workload_streaming),
    "binary": ({**_V2, "binary": "true"}, scenario_binary, workload_binary),
    "proto_v1": (
        {"proto_version": "1", "publication_names": "cdc_all", "messages": "true"},
        scenario_proto_v1,
        workload_proto_v1,
    ),
}


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    """Drop ``slot`` once its walsender has gone (it lingers briefly after a disconnect)."""
    for _ in range(100):
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is None:
            return
        if not row[0]:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return
        time.sleep(0.1)
    raise TimeoutError(f"replication slot {slot} stayed active")


def capture(dsn: str, name: str, out_dir: Path) -> None:
    """Run one scenario against a fresh database and write its two fixture files."""
    options, setup, workload = SCENARIOS[name]
    dbname = f"capture_{name}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {dbname}")
        admin.execute(f"CREATE DATABASE {dbname}")
    db_dsn = dsn.rsplit("/", 1)[0] + "/" + dbname
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        expected = setup(conn)
        expected.pop("setup_done", None)
        conn.execute("CREATE PUBLICATION cdc_all FOR ALL TABLES")
        conn.execute("SELECT pg_create_logical_replication_slot('capture', 'pgoutput')")
        types = conn.execute(
            "SELECT oid::int, typnamespace::regnamespace::text, typname FROM pg_type"
            " WHERE typtype = 'e' ORDER BY oid"
        ).fetchall()
        expected["types"] = [{"oid": o, "namespace": ns, "name": n} for o, ns, n in types]
        expected["units"] = workload(conn, expected)
        conn.execute("SELECT pg_logical_emit_message(false, %s, 'end')", (END_PREFIX,))
        payloads = read_payloads(db_dsn, "capture", options, until_prefix=END_PREFIX)
        drop_slot(conn, "capture")
    expected = {"scenario": name, "options": options, "messages": len(payloads), **expected}
    (out_dir / f"{name}.bin.gz").write_bytes(gzip.compress(frame(payloads), mtime=0))
    (out_dir / f"{name}.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"{name}: {len(payloads)} messages")


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0]) if argv else FIXTURE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    server = LocalPostgres(settings={"logical_decoding_work_mem": "'64kB'"}).start()
    try:
        for name in SCENARIOS:
            capture(server.dsn, name, out_dir)
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
