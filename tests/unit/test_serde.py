"""The Avro serde without a server: wire format, subject naming, encoding and decoding.

Byte-for-byte agreement with confluent-kafka's own AvroSerializer is checked
against its in-memory registry (``mock://``), which hands out the same ids to
both sides; the real registry is exercised in tests/integration.
"""

from __future__ import annotations

import asyncio
import io
import math
import struct
from collections.abc import Iterator
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer as ConfluentAvroDeserializer
from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentAvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.core.errors import SchemaError
from schema_registry.client import RegistryClient
from schema_registry.serde import (
    AvroDeserializer,
    AvroSerializer,
    PreparedSchema,
    RecordEncodeError,
    UnknownSchemaIdError,
    WireFormatError,
    frame,
    full_name,
    record_name_strategy,
    topic_name_strategy,
    topic_record_name_strategy,
    unframe,
)

CUSTOMER = {
    "type": "record",
    "name": "Value",
    "namespace": "app.public.customers",
    "fields": [
        {"name": "id", "type": "int"},
        {"name": "balance", "type": "long"},
        {"name": "ratio", "type": "double"},
        {"name": "score", "type": "float"},
        {"name": "name", "type": "string"},
        {"name": "photo", "type": "bytes"},
        {"name": "active", "type": "boolean"},
        {"name": "email", "type": ["null", "string"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {
            "name": "tier",
            "type": {"type": "enum", "name": "Tier", "symbols": ["FREE", "PRO", "ENTERPRISE"]},
        },
    ],
}

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOAT32 = st.floats(width=32, allow_nan=False)
TEXT = st.text(max_size=40)

CUSTOMERS = st.fixed_dictionaries(
    {
        "id": INT32,
        "balance": INT64,
        "ratio": st.floats(allow_nan=False),
        "score": FLOAT32,
        "name": TEXT,
        "photo": st.binary(max_size=40),
        "active": st.booleans(),
        "email": st.none() | TEXT,
        "tags": st.lists(TEXT, max_size=5),
        "attrs": st.dictionaries(TEXT, INT64, max_size=5),
        "tier": st.sampled_from(["FREE", "PRO", "ENTERPRISE"]),
    }
)


@pytest.fixture
def offline_client() -> Iterator[RegistryClient]:
    """A registry client that is never asked anything (every schema here is pre-resolved)."""
    client = RegistryClient.from_url("http://127.0.0.1:9")
    yield client
    asyncio.run(client.aclose())


def _fastavro_bytes(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


# -- wire format ------------------------------------------------------------------------


@given(schema_id=st.integers(min_value=0, max_value=2**32 - 1), payload=st.binary(max_size=64))
def test_unframe_returns_the_schema_id_and_payload_that_were_framed(
    schema_id: int, payload: bytes
) -> None:
    framed = frame(schema_id, payload)
    got_id, got_payload = unframe(framed)
    assert framed[:5] == struct.pack(">bI", 0, schema_id)
    assert (got_id, bytes(got_payload)) == (schema_id, payload)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x01"])
def test_a_message_shorter_than_the_header_is_rejected_clearly(data: bytes) -> None:
    with pytest.raises(WireFormatError, match="shorter than the 5-byte"):
        unframe(data)


def test_a_message_with_another_magic_byte_is_rejected_clearly() -> None:
    with pytest.raises(WireFormatError, match="magic byte 0x01"):
        unframe(b"\x01\x00\x00\x00\x07\x02")


def test_wire_format_errors_are_schema_errors() -> None:
    with pytest.raises(SchemaError):
        unframe(b"{}")


def test_a_schema_id_beyond_four_bytes_cannot_be_framed() -> None:
    with pytest.raises(WireFormatError, match="out of range"):
        frame(2**32, b"")


# -- subject naming ---------------------------------------------------------------------


def test_topic_name_strategy_names_key_and_value_subjects_after_the_topic() -> None:
    assert topic_name_strategy("app.public.t", "x.Value", is_key=True) == "app.public.t-key"
    assert topic_name_strategy("app.public.t", "x.Value", is_key=False) == "app.public.t-value"


def test_record_name_strategies_use_the_full_record_name() -> None:
    assert record_name_strategy("t", "ns.Customer", is_key=False) == "ns.Customer"
    assert topic_record_name_strategy("t", "ns.Customer", is_key=True) == "t-ns.Customer"
    with pytest.raises(SchemaError, match="named"):
        record_name_strategy("t", None, is_key=False)


def test_the_record_name_given_to_strategies_is_the_full_name() -> None:
    assert full_name(CUSTOMER) == "app.public.customers.Value"
    assert full_name({"type": "record", "name": "a.b.C", "namespace": "x", "fields": []}) == "a.b.C"
    assert full_name({"type": "record", "name": "C", "fields": []}) == "C"
    assert full_name("string") is None


# -- encoding ---------------------------------------------------------------------------

SAMPLE = {
    "id": 7,
    "balance": -(2**40),
    "ratio": 0.25,
    "score": 1.5,
    "name": "Zoë",
    "photo": b"\x00\xff",
    "active": True,
    "email": None,
    "tags": ["a", "b"],
    "attrs": {"x": 1},
    "tier": "PRO",
}


def test_serializer_writes_the_same_bytes_as_confluent_kafkas_avro_serializer(
    offline_client: RegistryClient,
) -> None:
    confluent_registry = SchemaRegistryClient.new_client({"url": "mock://serde-unit"})
    text = PreparedSchema.build(0, CUSTOMER, subject="t-value").schema
    schema_id = confluent_registry.register_schema("t-value", Schema(text, "AVRO"))
    confluent = ConfluentAvroSerializer(confluent_registry, text)
    expected = confluent(SAMPLE, SerializationContext("t", MessageField.VALUE))

    prepared = PreparedSchema.build(schema_id, CUSTOMER, subject="t-value")
    ours = AvroSerializer(offline_client)

    assert ours.serialize(prepared, SAMPLE) == expected
    assert expected == struct.pack(">bI", 0, schema_id) + _fastavro_bytes(CUSTOMER, SAMPLE)
    assert ours.serialize_many(prepared, [SAMPLE, SAMPLE]) == [expected, expected]


def test_confluent_kafkas_avro_deserializer_reads_what_the_serializer_wrote(
    offline_client: RegistryClient,
) -> None:
    confluent_registry = SchemaRegistryClient.new_client({"url": "mock://serde-unit-read"})
    text = PreparedSchema.build(0, CUSTOMER, subject="t-value").schema
    schema_id = confluent_registry.register_schema("t-value", Schema(text, "AVRO"))
    prepared = PreparedSchema.build(schema_id, CUSTOMER, subject="t-value")
    data = AvroSerializer(offline_client).serialize(prepared, SAMPLE)

    decoded = ConfluentAvroDeserializer(confluent_registry)(
        data, SerializationContext("t", MessageField.VALUE)
    )
    assert decoded == SAMPLE


@pytest.fixture(scope="module")
def customer_serde() -> Iterator[tuple[AvroSerializer, AvroDeserializer, PreparedSchema]]:
    """A serializer/deserializer pair for CUSTOMER under the fixed schema id 123456."""
    client = RegistryClient.from_url("http://127.0.0.1:9")
    prepared = PreparedSchema.build(123456, CUSTOMER, subject="t-value")
    deserializer = AvroDeserializer(client)
    deserializer.remember(123456, prepared.schema)
    yield AvroSerializer(client), deserializer, prepared
    asyncio.run(client.aclose())


@settings(max_examples=150, deadline=None)
@given(records=st.lists(CUSTOMERS, min_size=1, max_size=8))
def test_records_round_trip_through_serialize_and_deserialize_cached(
    customer_serde: tuple[AvroSerializer, AvroDeserializer, PreparedSchema],
    records: list[dict[str, Any]],
) -> None:
    serializer, deserializer, prepared = customer_serde

    singles = [serializer.serialize(prepared, r) for r in records]
    batch = serializer.serialize_many(prepared, records)

    assert batch == singles
    assert [deserializer.deserialize_cached(b) for b in batch] == records
    assert all(unframe(b)[0] == 123456 for b in batch)


def test_a_reader_schema_resolves_promotions_and_fills_defaults(
    offline_client: RegistryClient,
) -> None:
    writer = {"type": "record", "name": "R", "fields": [{"name": "n", "type": "int"}]}
    reader = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "n", "type": "double"},
            {"name": "note", "type": "string", "default": "none"},
        ],
    }
    prepared = PreparedSchema.build(5, writer, subject="r-value")
    data = AvroSerializer(offline_client).serialize(prepared, {"n": 3})
    deserializer = AvroDeserializer(offline_client, reader_schema=reader)
    deserializer.remember(5, writer)

    decoded = deserializer.deserialize_cached(data)

    assert decoded == {"n": 3.0, "note": "none"}
    assert not math.isnan(decoded["n"])


def test_a_reader_schema_that_cannot_read_the_writer_is_a_schema_error(
    offline_client: RegistryClient,
) -> None:
    writer = {"type": "record", "name": "R", "fields": [{"name": "n", "type": "string"}]}
    reader = {"type": "record", "name": "R", "fields": [{"name": "n", "type": "int"}]}
    data = AvroSerializer(offline_client).serialize(
        PreparedSchema.build(5, writer, subject="r"), {"n": "x"}
    )
    deserializer = AvroDeserializer(offline_client, reader_schema=reader)
    deserializer.remember(5, writer)
    with pytest.raises(SchemaError, match="cannot be read"):
        deserializer.deserialize_cached(data)


def test_deserialize_cached_names_an_unknown_schema_id(offline_client: RegistryClient) -> None:
    deserializer = AvroDeserializer(offline_client)
    with pytest.raises(UnknownSchemaIdError, match="schema id 99 is not cached"):
        deserializer.deserialize_cached(frame(99, b"\x02"))


def test_a_truncated_payload_is_reported_as_a_wire_format_error(
    offline_client: RegistryClient,
) -> None:
    prepared = PreparedSchema.build(8, CUSTOMER, subject="t-value")
    data = AvroSerializer(offline_client).serialize(prepared, SAMPLE)
    deserializer = AvroDeserializer(offline_client)
    deserializer.remember(8, CUSTOMER)
    with pytest.raises(WireFormatError, match="schema 8"):
        deserializer.deserialize_cached(data[:-3])


def test_a_record_that_does_not_fit_its_schema_names_the_subject(
    offline_client: RegistryClient,
) -> None:
    prepared = PreparedSchema.build(3, CUSTOMER, subject="t-value")
    serializer = AvroSerializer(offline_client)
    with pytest.raises(RecordEncodeError, match="schema 3 of t-value"):
        serializer.serialize(prepared, {**SAMPLE, "id": "seven"})
    with pytest.raises(RecordEncodeError, match="record #1"):
        serializer.serialize_many(prepared, [SAMPLE, {**SAMPLE, "tier": None}])
    # The serializer stays usable after a failure.
    assert unframe(serializer.serialize(prepared, SAMPLE))[0] == 3


def test_an_invalid_schema_is_refused_before_any_registration(
    offline_client: RegistryClient,
) -> None:
    serializer = AvroSerializer(offline_client)
    with pytest.raises(SchemaError, match="invalid Avro schema"):
        asyncio.run(serializer.prepare("t", {"type": "no-such-type"}, is_key=False))
    with pytest.raises(SchemaError, match="not valid JSON"):
        asyncio.run(serializer.prepare("t", "{nope", is_key=False))
