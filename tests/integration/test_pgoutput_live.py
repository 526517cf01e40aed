"""The pgoutput decoder on a live replication stream from a real PostgreSQL.

A reader thread streams the slot while the test writes; the decoded rows must
equal what the workload wrote (read back in text form with ``RETURNING``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from cdc.capture.pgoutput import Decoder, Insert, Relation, Update
from tests.tools.capture_pgoutput import (
    END_PREFIX,
    begin,
    decoded_units,
    expand_expected,
    key_only,
    read_payloads,
    relation_info,
    returning,
)

OPTIONS = {
    "proto_version": "2",
    "publication_names": "live_pub",
    "messages": "true",
    "streaming": "on",
}


def write_workload(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Three insert transactions, then an update and a delete; the expected units."""
    units: list[dict[str, Any]] = []
    for batch in range(3):
        txn = begin(conn)
        rows = returning(
            conn,
            "INSERT INTO accounts SELECT i, 'owner ' || i, i * 10.5, date '2024-01-01' + i,"
            " ARRAY['t' || i, NULL], i %% 2 = 0"
            " FROM generate_series(%s::int, %s::int) i RETURNING *",
            (batch * 10 + 1, batch * 10 + 10),
        )
        txn["changes"] = [{"op": "insert", "table": "public.accounts", "new": r} for r in rows]
        conn.execute("COMMIT")
        units.append(txn)
    txn = begin(conn)
    (moved,) = returning(
        conn, "UPDATE accounts SET balance = -0.5, owner = NULL WHERE id = 3 RETURNING *"
    )
    (gone,) = returning(conn, "DELETE FROM accounts WHERE id = 4 RETURNING *")
    conn.execute("COMMIT")
    txn["changes"] = [
        {
            "op": "update",
            "table": "public.accounts",
            "old": None,
            "old_kind": None,
            "new": moved,
        },
        {
            "op": "delete",
            "table": "public.accounts",
            "old": key_only(gone, {0}),
            "old_kind": "K",
        },
    ]
    units.append(txn)

    return units


def test_a_live_stream_decodes_to_the_rows_the_workload_wrote(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance numeric(12,2),"
            " opened date, tags text[], active boolean)"
        )
        conn.execute("CREATE PUBLICATION live_pub FOR TABLE accounts")
        conn.execute("SELECT pg_create_logical_replication_slot('live', 'pgoutput')")
        expected_relation = relation_info(conn, "public.accounts")

        with ThreadPoolExecutor(max_workers=1) as pool:
            reading = pool.submit(
                read_payloads, pg_dsn, "live", OPTIONS, until_prefix=END_PREFIX, timeout=20
            )
            try:
                units = write_workload(conn)
            finally:  # the marker also ends the reader when the workload failed
                conn.execute("SELECT pg_logical_emit_message(false, %s, 'end')", (END_PREFIX,))
            payloads = reading.result(timeout=30)

    decoder = Decoder(protocol_version=2)
    messages = [decoder.decode(p) for p in payloads]
    decoded = decoded_units(messages, decoder)
    for unit in decoded:
        unit.pop("_end")
    assert decoded == expand_expected(units)

    (relation,) = {m for m in messages if isinstance(m, Relation)}
    columns = [[c.name, c.type_oid, c.type_modifier, c.is_key] for c in relation.columns]
    assert columns == expected_relation["columns"]
    assert decoder.relations[relation.oid] == relation
    inserted = [m for m in messages if isinstance(m, Insert)]
    assert [m.new[0] for m in inserted] == [str(i) for i in range(1, 31)]
    (update,) = [m for m in messages if isinstance(m, Update)]
    assert update.new[1] is None
    assert update.new[2] == "-0.50"
