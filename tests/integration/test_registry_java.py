"""Confluent's Java clients and this project's Python serde share one registry, both ways.

tests/java/RegistryProbe.java runs once per module against the session
registry: it reads the value our AvroSerializer wrote (KafkaAvroDeserializer),
writes its own (KafkaAvroSerializer, auto-registering), and drives
CachedSchemaRegistryClient; the tests below assert on what it saw and on what
our AvroDeserializer reads back from its bytes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schema_registry.client import Compatibility, RegistryClient
from schema_registry.serde import AvroDeserializer, AvroSerializer, unframe
from tests.java.jvm import compile_probes, run_probe

PY_SCHEMA = {
    "type": "record",
    "name": "PyEvent",
    "namespace": "cdcsync.probe",
    "fields": [
        {"name": "id", "type": "int"},
        {"name": "balance", "type": "long"},
        {"name": "ratio", "type": "double"},
        {"name": "name", "type": "string"},
        {"name": "active", "type": "boolean"},
        {"name": "email", "type": ["null", "string"], "default": None},
        {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": ["FREE", "PRO"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "int"}},
    ],
}
PY_RECORD = {
    "id": -7,
    "balance": 2**53 + 1,
    "ratio": 0.125,
    "name": "Zoë ✓",
    "active": False,
    "email": "zoe@example.com",
    "tier": "PRO",
    "tags": ["x", "y"],
    "attrs": {"k": 3},
}
# The record RegistryProbe.java writes (its input, spelled out there in Java).
JAVA_RECORD = {
    "id": 9007199254740993,
    "label": "from java ✓",
    "amount": 12.5,
    "flag": True,
    "note": None,
    "kind": "UPDATE",
    "tags": ["a", "b"],
}


@dataclass(frozen=True)
class ProbeRun:
    py_topic: str
    java_topic: str
    py_bytes: bytes
    java_bytes: bytes
    result: dict[str, Any]

    def step(self, name: str) -> dict[str, Any]:
        outcome: dict[str, Any] = self.result[name]
        assert "error" not in outcome, f"Java step {name!r} failed: {outcome}"
        return outcome


@pytest.fixture(scope="module")
def probe(registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> ProbeRun:
    classpath = compile_probes(tmp_path_factory.getbasetemp() / "java-probes")
    work = tmp_path_factory.mktemp("registry-probe")
    tag = uuid.uuid4().hex[:8]
    py_topic, java_topic = f"py-{tag}", f"java-{tag}"

    async def write() -> bytes:
        async with RegistryClient.from_url(registry_url) as client:
            serializer = AvroSerializer(client)
            prepared = await serializer.prepare(py_topic, PY_SCHEMA, is_key=False)
            return serializer.serialize(prepared, PY_RECORD)

    py_bytes = asyncio.run(write())
    (work / "py.bin").write_bytes(py_bytes)
    run_probe(
        classpath,
        "RegistryProbe",
        registry_url,
        py_topic,
        str(work / "py.bin"),
        java_topic,
        str(work / "java.bin"),
        str(work / "result.json"),
    )
    return ProbeRun(
        py_topic=py_topic,
        java_topic=java_topic,
        py_bytes=py_bytes,
        java_bytes=Path(work / "java.bin").read_bytes(),
        result=json.loads((work / "result.json").read_text()),
    )


def test_java_kafka_avro_deserializer_reads_what_our_serializer_wrote(probe: ProbeRun) -> None:
    seen = probe.step("read_from_other")
    assert seen["schema"] == "cdcsync.probe.PyEvent"
    assert seen["record"] == PY_RECORD


def test_our_deserializer_reads_what_java_kafka_avro_serializer_wrote(
    probe: ProbeRun, registry_url: str
) -> None:
    probe.step("write")

    async def read() -> Any:
        async with RegistryClient.from_url(registry_url) as client:
            return await AvroDeserializer(client).deserialize(probe.java_bytes)

    assert asyncio.run(read()) == JAVA_RECORD


def test_java_registry_client_sees_the_schema_its_serializer_registered(
    probe: ProbeRun,
) -> None:
    latest = probe.step("latest")
    assert latest["id"] == unframe(probe.java_bytes)[0]
    assert latest["version"] == 1
    assert json.loads(latest["schema"])["name"] == "JavaEvent"
    subjects = probe.step("subjects")["subjects"]
    assert {f"{probe.py_topic}-value", f"{probe.java_topic}-value"} <= set(subjects)


def test_java_compatibility_tests_tell_a_compatible_from_an_incompatible_evolution(
    probe: ProbeRun,
) -> None:
    assert probe.step("compatible_evolution")["is_compatible"] is True
    assert probe.step("incompatible_evolution")["is_compatible"] is False


def test_java_can_set_a_subjects_compatibility_and_python_sees_it(
    probe: ProbeRun, registry_url: str
) -> None:
    update = probe.step("update_compatibility")
    assert update == {"updated": "FULL", "read_back": "FULL"}

    async def read() -> Compatibility:
        async with RegistryClient.from_url(registry_url) as client:
            return await client.get_compatibility(f"{probe.java_topic}-value")

    assert asyncio.run(read()) is Compatibility.FULL


def test_java_registers_a_compatible_evolution_as_version_two(probe: ProbeRun) -> None:
    evolved = probe.step("register_evolved")
    assert evolved["version"] == 2
    assert evolved["versions"] == [1, 2]
    assert evolved["id"] != unframe(probe.java_bytes)[0]
