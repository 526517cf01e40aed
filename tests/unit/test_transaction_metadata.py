"""The BEGIN and END records of the transaction metadata topic, as Debezium writes them."""

from __future__ import annotations

import io
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from cdc.capture.encoding.transaction_metadata import (
    TransactionFrame,
    transaction_key_schema,
    transaction_topic,
    transaction_value_schema,
)


def through_avro(schema: dict[str, Any], record: dict[str, Any]) -> Any:
    parsed = parse_schema(schema)
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, record)
    buf.seek(0)
    return schemaless_reader(buf, parsed, None)


def test_begin_carries_the_begin_lsn_and_the_commit_time_and_no_counts() -> None:
    frame = TransactionFrame(xid=733, begin_lsn=26895688, commit_ts_us=1_796_504_763_396_123)
    key, value = frame.begin()
    assert key == {"id": "733:26895688"}
    assert value == {
        "status": "BEGIN",
        "id": "733:26895688",
        "event_count": None,
        "data_collections": None,
        "ts_ms": 1_796_504_763_396,
    }
    assert through_avro(transaction_value_schema(), value) == value
    assert through_avro(transaction_key_schema(), key) == key


def test_end_counts_events_per_table_in_java_hashmap_order_at_the_commit_lsn() -> None:
    frame = TransactionFrame(xid=733, begin_lsn=26895688, commit_ts_us=1_796_504_763_396_000)
    for table in ("public.every_type", "public.keyless", "public.keyless", "public.every_type"):
        frame.counted(table)
    key, value = frame.end(26896496)
    assert key == {"id": "733:26896496"}
    # Debezium's HashMap puts public.keyless first (measured against Debezium 3.6).
    assert value["data_collections"] == [
        {"data_collection": "public.keyless", "event_count": 2},
        {"data_collection": "public.every_type", "event_count": 2},
    ]
    assert value["event_count"] == 4
    assert value["status"] == "END"
    assert through_avro(transaction_value_schema(), value) == value


def test_a_transaction_whose_changes_were_all_skipped_ends_with_zero_events() -> None:
    _, value = TransactionFrame(xid=745, begin_lsn=1, commit_ts_us=0).end(2)
    assert value["event_count"] == 0
    assert value["data_collections"] == []


def test_the_topic_is_debeziums_default() -> None:
    assert transaction_topic("app") == "app.transaction"
