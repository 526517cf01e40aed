"""Schemas are identified by Confluent's canonical form, checked against Confluent's own Java code.

Confluent's registry parses each schema and compares ``AvroSchema.canonicalString()``
(Apache Avro Java's ``Schema.toString()``), so two spellings of one schema are one
schema. tests/java/CanonicalProbe.java gives Java's canonical strings for a corpus
of spellings, and runs the clients that depend on it: KafkaAvroSerializer with
``auto.register.schemas=false`` and Kafka Connect's AvroConverter, against schemas
this project's client registered in another spelling.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schema_registry.schemas import parse
from tests.java.jvm import compile_probes, run_probe

# Spellings that differ in attribute order, type shorthand, fullnames and namespaces.
CORPUS = [
    '{"name":"Row","namespace":"cdc","type":"record","fields":[{"type":"int","name":"id"}]}',
    '{"type":"record","name":"cdc.Row","fields":[{"name":"id","type":{"type":"int"}}]}',
    '{"type":"string"}',
    '"string"',
    '{"type":"record","name":"A","namespace":"x","doc":"d","aliases":["B","y.C"],"fields":['
    '{"name":"f","doc":"fd","aliases":["g"],"order":"descending","default":1,"type":"int",'
    '"custom":true},{"name":"e","type":{"type":"enum","name":"E","namespace":"z",'
    '"symbols":["P","Q"],"default":"Q","doc":"ed","p":1}},{"name":"e2","type":["null","z.E"],'
    '"default":null},{"name":"fx","type":{"type":"fixed","size":4,"name":"F","aliases":["G"]}},'
    '{"name":"m","type":{"type":"map","values":{"type":"array","items":"A"},"x":1}},'
    '{"name":"ts","type":{"logicalType":"timestamp-millis","type":"long"}},'
    '{"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":5,"scale":2}}],'
    '"rec":"yes"}',
    '{"type":"record","name":"Outer","namespace":"a.b","fields":[{"name":"in","type":'
    '{"type":"record","name":"Inner","namespace":"","fields":[{"name":"i","type":"int"}]}},'
    '{"name":"again","type":"Inner"}]}',
    '["null",{"type":"string","avro.java.string":"String"}]',
    '{"type":"array","items":{"type":"record","name":"I","fields":[]}}',
    '{"fields":[{"name":"x","type":{"items":{"symbols":["A"],"name":"S","type":"enum"},'
    '"type":"array"}}],"name":"W","type":"record","namespace":"n.m"}',
]

# The schema CanonicalProbe's serializer writes, in Java's spelling, respelled here.
PROBE_SCHEMA_RESPELLED = {
    "namespace": "cdcsync.canon",
    "fields": [
        {"type": {"type": "long"}, "name": "id"},
        {"default": None, "type": ["null", {"type": "string"}], "name": "name"},
    ],
    "type": "record",
    "name": "Row",
}
# The Avro schema Connect's AvroData makes of CanonicalProbe's Struct, respelled.
CONNECT_SCHEMA_RESPELLED = {
    "connect.name": "cdcsync.canon.Row",
    "fields": [
        {"name": "id", "type": {"type": "long"}},
        {"default": None, "name": "name", "type": ["null", {"type": "string"}]},
    ],
    "name": "cdcsync.canon.Row",
    "type": "record",
}


@pytest.fixture(scope="module")
def classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    return compile_probes(tmp_path_factory.getbasetemp() / "java-probes")


@pytest.fixture
def http(registry_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry_url, timeout=30) as client:
        yield client


def test_our_canonical_form_is_confluents_canonical_string(classpath: str, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text(json.dumps(CORPUS))
    run_probe(
        classpath,
        "CanonicalProbe",
        "canonical",
        str(tmp_path / "in.json"),
        str(tmp_path / "out.json"),
    )
    java = json.loads((tmp_path / "out.json").read_text())
    assert not [j for j in java if j.startswith("ERROR")], java
    assert [parse(text).canonical for text in CORPUS] == java


def _register(http: httpx.Client, subject: str, schema: Any) -> int:
    response = http.post(f"/subjects/{subject}/versions", json={"schema": json.dumps(schema)})
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            {
                "name": "Row",
                "namespace": "cdc",
                "type": "record",
                "fields": [{"name": "id", "type": "int"}],
            },
            {
                "type": "record",
                "name": "Row",
                "namespace": "cdc",
                "fields": [{"type": "int", "name": "id"}],
            },
        ),
        ("string", {"type": "string"}),
        (
            {"type": "record", "name": "cdc.Row", "fields": [{"name": "id", "type": "int"}]},
            {
                "type": "record",
                "name": "Row",
                "namespace": "cdc",
                "fields": [{"name": "id", "type": "int"}],
            },
        ),
    ],
    ids=["attribute-order", "primitive-shorthand", "fullname"],
)
def test_another_spelling_of_a_registered_schema_is_found_and_not_registered_again(
    http: httpx.Client, first: Any, second: Any
) -> None:
    subject = f"canon-{uuid.uuid4().hex[:10]}-value"
    schema_id = _register(http, subject, first)
    found = http.post(f"/subjects/{subject}", json={"schema": json.dumps(second)})
    assert found.status_code == 200, found.text
    assert (found.json()["id"], found.json()["version"]) == (schema_id, 1)
    assert _register(http, subject, second) == schema_id
    other = f"canon-{uuid.uuid4().hex[:10]}-value"
    assert _register(http, other, second) == schema_id
    assert http.get(f"/subjects/{subject}/versions").json() == [1]


def test_a_reference_matches_whatever_the_spelling_of_the_referring_schema(
    http: httpx.Client,
) -> None:
    tag = uuid.uuid4().hex[:10]
    base = f"canon-ref-{tag}"
    _register(http, base, {"type": "enum", "name": "cdc.Kind", "symbols": ["A", "B"]})
    refs = [{"name": "cdc.Kind", "subject": base, "version": 1}]
    user = {"type": "record", "name": "cdc.User", "fields": [{"name": "k", "type": "cdc.Kind"}]}
    respelled = {
        "fields": [{"type": "Kind", "name": "k"}],
        "namespace": "cdc",
        "name": "User",
        "type": "record",
    }
    subject = f"canon-user-{tag}"
    first = http.post(
        f"/subjects/{subject}/versions", json={"schema": json.dumps(user), "references": refs}
    )
    assert first.status_code == 200, first.text
    again = http.post(
        f"/subjects/{subject}", json={"schema": json.dumps(respelled), "references": refs}
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]


def test_java_clients_find_schemas_registered_in_another_spelling_without_registering(
    classpath: str, http: httpx.Client, registry_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, connect_topic = f"canon-java-{tag}", f"canon-connect-{tag}"
    serializer_id = _register(http, f"{topic}-value", PROBE_SCHEMA_RESPELLED)
    connect_id = _register(http, f"{connect_topic}-value", CONNECT_SCHEMA_RESPELLED)
    out = tmp_path / "result.json"
    run_probe(classpath, "CanonicalProbe", "clients", registry_url, topic, connect_topic, str(out))
    result = json.loads(out.read_text())
    assert result["serialize"] == {"id": serializer_id}
    assert result["connect"] == {
        "id": connect_id,
        "read_id": 7,
        "read_name": "connect",
        "schema_name": "cdcsync.canon.Row",
    }
    for subject in (f"{topic}-value", f"{connect_topic}-value"):
        assert http.get(f"/subjects/{subject}/versions").json() == [1]
