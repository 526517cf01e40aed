"""confluent-kafka's own registry client and Avro serde work unchanged against this registry."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext


def avro_schema(*fields: dict[str, Any], name: str = "Customer") -> Schema:
    text = json.dumps(
        {"type": "record", "name": name, "namespace": "app.public", "fields": list(fields)}
    )
    return Schema(text, schema_type="AVRO")


ID = {"name": "id", "type": "long"}
EMAIL = {"name": "email", "type": ["null", "string"], "default": None}
V1 = avro_schema(ID)
V2 = avro_schema(ID, EMAIL)


def unique_subject() -> str:
    return f"app.public.customers-{uuid.uuid4().hex[:8]}-value"


def client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": url})


def test_registering_the_same_schema_twice_returns_the_same_id(registry_url: str) -> None:
    subject = unique_subject()
    first = client(registry_url).register_schema(subject, V1)
    # A fresh client has no cache, so the second call really reaches the server.
    again = client(registry_url).register_schema(subject, V1)
    assert again == first
    assert client(registry_url).get_versions(subject) == [1]


def test_lookup_and_version_reads_return_what_was_registered(registry_url: str) -> None:
    sr = client(registry_url)
    subject = unique_subject()
    id1 = sr.register_schema(subject, V1)
    id2 = sr.register_schema(subject, V2)
    found = client(registry_url).lookup_schema(subject, V1)
    assert (found.schema_id, found.version) == (id1, 1)
    latest = sr.get_latest_version(subject)
    assert (latest.schema_id, latest.version) == (id2, 2)
    assert json.loads(str(latest.schema.schema_str)) == json.loads(str(V2.schema_str))
    first = sr.get_version(subject, 1)
    assert first.schema_id == id1
    assert subject in sr.get_subjects()
    assert json.loads(str(client(registry_url).get_schema(id2).schema_str)) == json.loads(
        str(V2.schema_str)
    )


def test_an_unknown_schema_lookup_raises_40403(registry_url: str) -> None:
    sr = client(registry_url)
    subject = unique_subject()
    sr.register_schema(subject, V1)
    with pytest.raises(SchemaRegistryError) as exc:
        sr.lookup_schema(subject, avro_schema({"name": "other", "type": "int"}))
    assert exc.value.error_code == 40403


def test_soft_then_permanent_delete_of_a_subject(registry_url: str) -> None:
    sr = client(registry_url)
    subject = unique_subject()
    sr.register_schema(subject, V1)
    sr.register_schema(subject, V2)
    assert sr.delete_subject(subject) == [1, 2]
    assert subject not in sr.get_subjects()
    assert subject in sr.get_subjects(deleted=True)
    assert sr.delete_subject(subject, permanent=True) == [1, 2]
    assert subject not in sr.get_subjects(deleted=True)


def test_an_incompatible_schema_raises_409_naming_the_field(registry_url: str) -> None:
    sr = client(registry_url)
    subject = unique_subject()
    sr.register_schema(subject, V1)
    breaking = avro_schema(ID, {"name": "tier", "type": "string"})
    assert sr.test_compatibility(subject, breaking) is False
    assert sr.test_compatibility(subject, V2) is True
    with pytest.raises(SchemaRegistryError) as exc:
        sr.register_schema(subject, breaking)
    assert exc.value.http_status_code == 409
    assert exc.value.error_code == 409
    assert "tier" in exc.value.error_message


def test_an_invalid_schema_raises_42201(registry_url: str) -> None:
    sr = client(registry_url)
    with pytest.raises(SchemaRegistryError) as exc:
        sr.register_schema(unique_subject(), Schema('{"type": "record", "name": "R"}', "AVRO"))
    assert exc.value.error_code == 42201


def test_subject_compatibility_can_be_set_and_read_back(registry_url: str) -> None:
    sr = client(registry_url)
    subject = unique_subject()
    sr.register_schema(subject, V2)
    sr.set_compatibility(subject_name=subject, level="FORWARD")
    assert sr.get_compatibility(subject) == "FORWARD"
    # FORWARD: old readers must read the new data; dropping a defaulted field is fine.
    assert sr.test_compatibility(subject, V1) is True
    sr.set_compatibility(subject_name=subject, level="FULL_TRANSITIVE")
    assert sr.get_compatibility(subject) == "FULL_TRANSITIVE"


def test_modes_can_be_set_and_readonly_refuses_registration(fresh_registry_url: str) -> None:
    sr = client(fresh_registry_url)
    assert sr.get_global_mode() == "READWRITE"
    subject = unique_subject()
    assert sr.update_mode(subject, "READONLY") == "READONLY"
    assert sr.get_mode(subject) == "READONLY"
    with pytest.raises(SchemaRegistryError) as exc:
        sr.register_schema(subject, V1)
    assert exc.value.error_code == 42205
    assert sr.delete_mode(subject) == "READONLY"
    assert sr.register_schema(subject, V1) > 0
    assert sr.update_global_mode("READONLY") == "READONLY"
    assert sr.get_global_mode() == "READONLY"


def test_avro_serde_round_trips_with_a_preregistered_schema(registry_url: str) -> None:
    topic = f"app.public.customers-{uuid.uuid4().hex[:8]}"
    sr = client(registry_url)
    schema_id = sr.register_schema(f"{topic}-value", V2)
    serializer = AvroSerializer(sr, V2.schema_str, conf={"auto.register.schemas": False})
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = serializer({"id": 7, "email": "a@example.com"}, ctx)
    assert payload[0] == 0
    assert int.from_bytes(payload[1:5], "big") == schema_id
    deserializer = AvroDeserializer(client(registry_url))
    assert deserializer(payload, ctx) == {"id": 7, "email": "a@example.com"}


def test_avro_serializer_can_use_the_latest_registered_version(registry_url: str) -> None:
    topic = f"app.public.customers-{uuid.uuid4().hex[:8]}"
    sr = client(registry_url)
    sr.register_schema(f"{topic}-value", V1)
    latest_id = sr.register_schema(f"{topic}-value", V2)
    serializer = AvroSerializer(
        sr, None, conf={"auto.register.schemas": False, "use.latest.version": True}
    )
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = serializer({"id": 1, "email": None}, ctx)
    assert int.from_bytes(payload[1:5], "big") == latest_id
    assert AvroDeserializer(client(registry_url))(payload, ctx) == {"id": 1, "email": None}


def test_the_serializer_refuses_a_schema_that_was_never_registered(registry_url: str) -> None:
    topic = f"app.public.customers-{uuid.uuid4().hex[:8]}"
    sr = client(registry_url)
    sr.register_schema(f"{topic}-value", V1)
    serializer = AvroSerializer(sr, V2.schema_str, conf={"auto.register.schemas": False})
    with pytest.raises(SchemaRegistryError) as exc:
        serializer({"id": 1, "email": None}, SerializationContext(topic, MessageField.VALUE))
    assert exc.value.error_code == 40403
