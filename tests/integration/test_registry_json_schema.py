"""JSON Schema (``schemaType: JSON``) through the registry, with confluent-kafka's JSON serde.

confluent-kafka-python's ``JSONSerializer`` registers its schema (and, with
``auto.register.schemas`` off, looks it up), ``JSONDeserializer`` fetches it by
the id in the frame and validates the payload; references resolve through the
registry; compatibility follows the JSON Schema rules; Protobuf is refused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

CUSTOMER = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Customer",
    "type": "object",
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["id"],
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def http(registry_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry_url, timeout=30) as client:
        yield client


def test_confluents_json_serializer_and_deserializer_round_trip(registry_url: str) -> None:
    sr = SchemaRegistryClient({"url": registry_url})
    topic = unique("json-customers")
    ctx = SerializationContext(topic, MessageField.VALUE)
    serializer = JSONSerializer(json.dumps(CUSTOMER), sr)
    framed = serializer({"id": 7, "name": "Zoë"}, ctx)
    assert framed is not None
    schema_id = int.from_bytes(framed[1:5], "big")
    registered = SchemaRegistryClient({"url": registry_url}).get_latest_version(f"{topic}-value")
    assert (registered.schema_id, registered.schema.schema_type) == (schema_id, "JSON")
    assert json.loads(str(registered.schema.schema_str)) == CUSTOMER
    deserializer = JSONDeserializer(
        None, schema_registry_client=SchemaRegistryClient({"url": registry_url})
    )
    assert deserializer(framed, ctx) == {"id": 7, "name": "Zoë"}
    # Without auto-registration, the serializer finds the schema (same text, same id).
    lookup_only = JSONSerializer(
        json.dumps(CUSTOMER),
        SchemaRegistryClient({"url": registry_url}),
        conf={"auto.register.schemas": False},
    )
    again = lookup_only({"id": 8}, ctx)
    assert again is not None and int.from_bytes(again[1:5], "big") == schema_id
    assert sr.get_versions(f"{topic}-value") == [1]


def test_json_schemas_register_look_up_and_answer_their_type(http: httpx.Client) -> None:
    subject = unique("json-api")
    body = {"schema": json.dumps(CUSTOMER), "schemaType": "JSON"}
    first = http.post(f"/subjects/{subject}/versions", json=body)
    assert first.status_code == 200, first.text
    spaced = {"schema": json.dumps(CUSTOMER, indent=2), "schemaType": "JSON"}
    assert http.post(f"/subjects/{subject}/versions", json=spaced).json() == first.json()
    found = http.post(f"/subjects/{subject}", json=spaced).json()
    assert (found["id"], found["version"], found["schemaType"]) == (first.json()["id"], 1, "JSON")
    assert http.get(f"/schemas/ids/{found['id']}").json()["schemaType"] == "JSON"
    # The same text as Avro is not the same schema (and "type":"object" is no Avro type).
    as_avro = http.post(f"/subjects/{subject}", json={"schema": json.dumps(CUSTOMER)})
    assert as_avro.status_code == 422
    assert "JSON" in http.get("/schemas/types").json()
    invalid = {"schema": json.dumps({"type": "objekt"}), "schemaType": "JSON"}
    refused = http.post(f"/subjects/{unique('json-bad')}/versions", json=invalid)
    assert (refused.status_code, refused.json()["error_code"]) == (422, 42201)


def test_protobuf_is_refused_with_a_clear_422(http: httpx.Client) -> None:
    body = {"schema": 'syntax = "proto3"; message M { int32 id = 1; }', "schemaType": "PROTOBUF"}
    subject = unique("proto")
    refused = http.post(f"/subjects/{subject}/versions", json=body)
    assert (refused.status_code, refused.json()["error_code"]) == (422, 42201)
    assert "PROTOBUF is not supported" in refused.json()["message"]
    assert subject not in http.get("/subjects").json()


def test_json_references_resolve_for_confluents_serde(registry_url: str) -> None:
    sr = SchemaRegistryClient({"url": registry_url})
    address_subject = unique("json-address")
    address = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    sr.register_schema(address_subject, Schema(json.dumps(address), "JSON"))
    person = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "home": {"$ref": "address.json"}},
    }
    refs = [SchemaReference("address.json", address_subject, 1)]
    topic = unique("json-people")
    person_id = sr.register_schema(f"{topic}-value", Schema(json.dumps(person), "JSON", refs))
    found = sr.lookup_schema(f"{topic}-value", Schema(json.dumps(person), "JSON", refs))
    assert found.schema_id == person_id
    ctx = SerializationContext(topic, MessageField.VALUE)
    serializer = JSONSerializer(
        Schema(json.dumps(person), "JSON", refs), sr, conf={"auto.register.schemas": False}
    )
    framed = serializer({"name": "Ann", "home": {"city": "Oslo"}}, ctx)
    assert framed is not None and int.from_bytes(framed[1:5], "big") == person_id
    deserializer = JSONDeserializer(
        None, schema_registry_client=SchemaRegistryClient({"url": registry_url})
    )
    assert deserializer(framed, ctx) == {"name": "Ann", "home": {"city": "Oslo"}}
    with pytest.raises(Exception, match="city"):
        serializer({"name": "Ann", "home": {}}, ctx)
    # A reference to a version that does not exist is refused.
    missing = [SchemaReference("address.json", address_subject, 9)]
    with pytest.raises(SchemaRegistryError) as exc:
        sr.register_schema(unique("json-x"), Schema(json.dumps(person), "JSON", missing))
    assert exc.value.error_code == 42201


def _json(schema: dict[str, Any]) -> dict[str, str]:
    return {"schema": json.dumps(schema), "schemaType": "JSON"}


def test_json_compatibility_follows_the_content_model(http: httpx.Client) -> None:
    closed = {
        "type": "object",
        "properties": {"id": {"type": "integer"}},
        "additionalProperties": False,
    }
    subject = unique("json-compat")
    assert http.post(f"/subjects/{subject}/versions", json=_json(closed)).status_code == 200
    # BACKWARD (the default): an optional property added to a closed model reads old data.
    added = {**closed, "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}
    widened = {**closed, "properties": {"id": {"type": "number"}}}
    narrowed = {**closed, "properties": {"id": {"type": "string"}}}
    required = {**added, "required": ["name"]}
    verdicts = {}
    for label, schema in (
        ("added", added),
        ("widened", widened),
        ("narrowed", narrowed),
        ("required", required),
    ):
        answer = http.post(
            f"/compatibility/subjects/{subject}/versions/latest",
            json=_json(schema),
            params={"verbose": "true"},
        )
        assert answer.status_code == 200, answer.text
        verdicts[label] = answer.json()["is_compatible"]
    assert verdicts == {"added": True, "widened": True, "narrowed": False, "required": False}
    refused = http.post(f"/subjects/{subject}/versions", json=_json(narrowed))
    assert (refused.status_code, refused.json()["error_code"]) == (409, 409)
    assert http.post(f"/subjects/{subject}/versions", json=_json(added)).status_code == 200
    assert http.get(f"/subjects/{subject}/versions").json() == [1, 2]
    # An Avro schema under a JSON subject is incompatible, not a crash.
    avro = {"schema": json.dumps({"type": "record", "name": "R", "fields": []})}
    assert http.post(f"/subjects/{subject}/versions", json=avro).status_code == 409
