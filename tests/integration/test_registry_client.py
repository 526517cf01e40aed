"""The registry client and Avro serde against this project's real registry server.

Requests are counted with an httpx event hook to prove what the caches save;
faults are real: a registry that starts late, a port nobody listens on, and a
TCP proxy in front of the real server that answers 503 to its first
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer as ConfluentAvroDeserializer
from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentAvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from cdc.core.errors import IncompatibleSchemaError, RegistryError, RegistryUnavailable
from cdc.demo.throwaway import LocalRegistry, free_port
from schema_registry.client import (
    Compatibility,
    IncompatibleSchema,
    Mode,
    RegistryClient,
    RetryPolicy,
)
from schema_registry.serde import AvroDeserializer, AvroSerializer, unframe

T = TypeVar("T")
FAST_RETRY = RetryPolicy(attempts=40, base_delay=0.05, max_delay=0.4)


def schema(*fields: tuple[str, Any], name: str = "Row") -> str:
    """A record schema; nullable (union) fields default to null."""
    return json.dumps(
        {
            "type": "record",
            "name": name,
            "namespace": "cdcsync.test",
            "fields": [
                {"name": n, "type": t, **({"default": None} if isinstance(t, list) else {})}
                for n, t in fields
            ],
        }
    )


V1 = schema(("id", "int"), ("name", "string"))


def unique(prefix: str = "subject") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Counted:
    """A registry client whose HTTP requests are recorded as ``METHOD /path``."""

    def __init__(self, url: str | list[str], **kwargs: Any) -> None:
        self.requests: list[str] = []

        async def record(request: httpx.Request) -> None:
            self.requests.append(f"{request.method} {request.url.path}")

        self.client = RegistryClient.from_url(url, event_hooks={"request": [record]}, **kwargs)


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


@contextlib.asynccontextmanager
async def counted(url: str | list[str], **kwargs: Any) -> AsyncIterator[Counted]:
    c = Counted(url, **kwargs)
    try:
        yield c
    finally:
        await c.client.aclose()


# -- registration, lookup and caches ---------------------------------------------------


def test_registering_the_same_schema_twice_returns_the_same_id_with_one_request(
    registry_url: str,
) -> None:
    subject = unique()

    async def scenario() -> None:
        async with counted(registry_url) as c:
            first = await c.client.register(subject, V1)
            # Same schema, other spelling (key order, spaces): still no request.
            respelled = json.dumps(json.loads(V1), indent=2, sort_keys=True)
            again = await c.client.register(subject, respelled)
            assert first == again
            assert c.requests == [f"POST /subjects/{subject}/versions"]

    run(scenario)


def test_lookup_finds_the_version_and_a_second_lookup_costs_nothing(registry_url: str) -> None:
    subject = unique()
    v2 = schema(("id", "int"), ("name", "string"), ("age", ["null", "int"]))

    async def scenario() -> None:
        async with counted(registry_url) as c:
            id1 = await c.client.register(subject, V1)
            id2 = await c.client.register(subject, v2)
            before = len(c.requests)
            found = await c.client.lookup(subject, V1)
            assert (found.subject, found.schema_id, found.version) == (subject, id1, 1)
            assert json.loads(found.schema) == json.loads(V1)
            assert await c.client.lookup(subject, V1) == found
            assert len(c.requests) == before + 1
            assert (await c.client.latest(subject)).schema_id == id2
            assert (await c.client.version(subject, 2)).schema_id == id2
            assert await c.client.versions(subject) == [1, 2]
            assert subject in await c.client.subjects()

    run(scenario)


def test_a_schema_fetched_by_id_is_cached_and_concurrent_fetches_share_one_request(
    registry_url: str,
) -> None:
    subject = unique()

    async def scenario() -> None:
        async with counted(registry_url) as writer:
            schema_id = await writer.client.register(subject, V1)
        async with counted(registry_url) as reader:
            texts = await asyncio.gather(*(reader.client.get_schema(schema_id) for _ in range(20)))
            assert await reader.client.get_schema(schema_id) == texts[0]
            assert all(json.loads(t) == json.loads(V1) for t in texts)
            assert reader.requests == [f"GET /schemas/ids/{schema_id}"]

    run(scenario)


def test_the_cache_is_bounded_and_forgets_the_least_recently_used_schema(
    registry_url: str,
) -> None:
    subject = unique()
    texts = [schema(("id", "int"), (f"f{i}", ["null", "string"])) for i in range(3)]

    async def scenario() -> None:
        async with counted(registry_url, cache_size=2) as c:
            ids = [await c.client.register(subject, t) for t in texts]
            c.requests.clear()
            assert [await c.client.register(subject, t) for t in texts[1:]] == ids[1:]
            assert c.requests == []
            assert await c.client.register(subject, texts[0]) == ids[0]
            assert c.requests == [f"POST /subjects/{subject}/versions"]

    run(scenario)


def test_deleting_a_subject_forgets_it_in_the_cache_too(registry_url: str) -> None:
    subject = unique()

    async def scenario() -> None:
        async with counted(registry_url) as c:
            await c.client.register(subject, V1)
            await c.client.lookup(subject, V1)
            assert await c.client.delete_subject(subject) == [1]
            assert subject in await c.client.subjects(deleted=True)
            assert subject not in await c.client.subjects()
            with pytest.raises(RegistryError) as missing:
                await c.client.lookup(subject, V1)
            assert missing.value.error_code == 40401
            assert await c.client.delete_subject(subject, permanent=True) == [1]
            assert subject not in await c.client.subjects(deleted=True)

    run(scenario)


# -- compatibility and mode ------------------------------------------------------------


def test_an_incompatible_schema_is_refused_with_the_servers_reasons(registry_url: str) -> None:
    subject = unique()
    breaking = schema(("id", "string"), ("name", "string"))
    compatible = schema(("id", "long"), ("name", "string"))

    async def scenario() -> None:
        async with counted(registry_url) as c:
            await c.client.register(subject, V1)
            assert await c.client.set_compatibility("BACKWARD", subject=subject) is (
                Compatibility.BACKWARD
            )
            assert await c.client.get_compatibility(subject) is Compatibility.BACKWARD
            ok, reasons = await c.client.test_compatibility(subject, compatible)
            assert (ok, reasons) == (True, ())
            ok, reasons = await c.client.test_compatibility(subject, breaking)
            assert not ok
            assert "/fields/0" in " ".join(reasons)  # the location of "id"
            c.requests.clear()
            with pytest.raises(IncompatibleSchema) as refused:
                await c.client.register(subject, breaking)
            assert isinstance(refused.value, IncompatibleSchemaError)
            assert refused.value.error_code == 409
            assert "/fields/0" in str(refused.value)
            assert len(c.requests) == 1  # a 409 is never retried

    run(scenario)


def test_an_invalid_schema_is_a_registry_error_42201_without_retry(registry_url: str) -> None:
    async def scenario() -> None:
        async with counted(registry_url) as c:
            with pytest.raises(RegistryError) as invalid:
                await c.client.register(unique(), '{"type": "record", "name": "X", "fields": 3}')
            assert (invalid.value.error_code, invalid.value.status) == (42201, 422)
            assert len(c.requests) == 1

    run(scenario)


def test_unknown_subjects_and_ids_are_registry_errors_404(registry_url: str) -> None:
    async def scenario() -> None:
        async with counted(registry_url) as c:
            with pytest.raises(RegistryError) as no_subject:
                await c.client.latest(unique())
            assert (no_subject.value.error_code, no_subject.value.status) == (40401, 404)
            with pytest.raises(RegistryError) as no_id:
                await c.client.get_schema(2_000_000_000)
            assert (no_id.value.error_code, no_id.value.status) == (40403, 404)
            assert len(c.requests) == 2

    run(scenario)


def test_a_read_only_subject_refuses_registrations(registry_url: str) -> None:
    subject = unique()

    async def scenario() -> None:
        async with counted(registry_url) as c:
            await c.client.register(subject, V1)
            assert await c.client.set_mode(Mode.READONLY, subject=subject) is Mode.READONLY
            assert await c.client.get_mode(subject) is Mode.READONLY
            with pytest.raises(RegistryError) as refused:
                await c.client.register(subject, schema(("id", "long"), ("name", "string")))
            assert refused.value.status == 422
            assert await c.client.set_mode("READWRITE", subject=subject) is Mode.READWRITE

    run(scenario)


def test_global_compatibility_and_mode_can_be_changed(fresh_registry_url: str) -> None:
    async def scenario() -> None:
        async with counted(fresh_registry_url) as c:
            assert await c.client.set_compatibility(Compatibility.FULL_TRANSITIVE) is (
                Compatibility.FULL_TRANSITIVE
            )
            assert await c.client.get_compatibility() is Compatibility.FULL_TRANSITIVE
            assert await c.client.get_compatibility(unique()) is Compatibility.FULL_TRANSITIVE
            assert await c.client.set_mode(Mode.READONLY) is Mode.READONLY
            assert await c.client.get_mode() is Mode.READONLY

    run(scenario)


# -- faults: retries, replicas, auth ---------------------------------------------------


@pytest.fixture
def late_registry() -> Iterator[str]:
    """A registry that starts on a fixed port 1.5 s after the test begins."""
    server = LocalRegistry(port=free_port())

    def start_later() -> None:
        time.sleep(1.5)
        server.start()

    thread = threading.Thread(target=start_later, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        thread.join(timeout=60)
        server.stop()


def test_a_registry_that_is_down_then_up_is_retried_until_it_answers(
    late_registry: str,
) -> None:
    async def scenario() -> None:
        async with counted(late_registry, retry=FAST_RETRY) as c:
            schema_id = await c.client.register(unique(), V1)
            assert len(c.requests) > 1  # the first attempts found nobody listening
            assert json.loads(await c.client.get_schema(schema_id)) == json.loads(V1)

    run(scenario)


def test_an_unreachable_registry_raises_registry_unavailable_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
        async with counted(url, retry=policy) as c:
            with pytest.raises(RegistryUnavailable, match="after 3 attempts"):
                await c.client.subjects()
            assert len(c.requests) == 3

    run(scenario)


def test_a_dead_replica_is_skipped_for_a_live_one(registry_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> None:
        async with counted([dead, registry_url], retry=FAST_RETRY) as c:
            assert isinstance(await c.client.subjects(), list)

    run(scenario)


@contextlib.asynccontextmanager
async def failing_proxy(target_url: str, *, failures: int) -> AsyncIterator[str]:
    """A TCP proxy to the registry whose first ``failures`` connections get a 503."""
    host, port = target_url.removeprefix("http://").split(":")
    remaining = [failures]

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if remaining[0] > 0:
            remaining[0] -= 1
            await reader.readuntil(b"\r\n\r\n")
            body = b'{"error_code":50003,"message":"overloaded"}'
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Retry-After: 0\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{proxy_port}"
    finally:
        server.close()


def test_server_errors_are_retried_and_the_last_one_is_reported(registry_url: str) -> None:
    async def scenario() -> None:
        async with (
            failing_proxy(registry_url, failures=2) as proxy,
            counted(proxy, retry=FAST_RETRY) as c,
        ):
            assert isinstance(await c.client.subjects(), list)
            assert len(c.requests) == 3
        async with (
            failing_proxy(registry_url, failures=10) as proxy,
            counted(proxy, retry=RetryPolicy(attempts=2, base_delay=0.01)) as c,
        ):
            with pytest.raises(RegistryUnavailable, match=r"503 \(50003\): overloaded"):
                await c.client.subjects()

    run(scenario)


def test_basic_auth_credentials_work_and_never_show_in_errors() -> None:
    secret = uuid.uuid4().hex
    os.environ["CDCSYNC_TEST_REGISTRY_AUTH"] = f"alice:{secret}"
    server = LocalRegistry(extra_args=("--basic-auth-env", "CDCSYNC_TEST_REGISTRY_AUTH"))
    try:
        server.start()
    finally:
        del os.environ["CDCSYNC_TEST_REGISTRY_AUTH"]
    try:
        with_creds = server.url.replace("http://", f"http://alice:{secret}@")

        async def scenario() -> None:
            async with counted(with_creds) as c:
                assert isinstance(await c.client.subjects(), list)
                assert secret not in repr(c.client)
            async with counted(server.url, auth=("alice", "wrong")) as c:
                with pytest.raises(RegistryError) as denied:
                    await c.client.subjects()
                assert denied.value.status == 401
                assert len(c.requests) == 1
            async with counted(with_creds, retry=RetryPolicy(attempts=1)) as c:
                await c.client.register(unique(), V1)
                with pytest.raises(RegistryError) as bad:
                    await c.client.register(unique(), "{nope")
                assert secret not in str(bad.value)

        run(scenario)
    finally:
        server.stop()


# -- serde against the real registry and confluent-kafka's clients ---------------------

ROW = {"id": 42, "name": "Ada"}


def test_confluent_kafkas_deserializer_reads_what_our_serializer_wrote(registry_url: str) -> None:
    topic = unique("topic")

    async def produce() -> bytes:
        async with counted(registry_url) as c:
            serializer = AvroSerializer(c.client)
            prepared = await serializer.prepare(topic, V1, is_key=False)
            assert prepared.subject == f"{topic}-value"
            assert await serializer.prepare(topic, json.loads(V1), is_key=False) is prepared
            assert len(c.requests) == 1
            return serializer.serialize(prepared, ROW)

    data = run(produce)
    confluent = ConfluentAvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    assert confluent(data, SerializationContext(topic, MessageField.VALUE)) == ROW


def test_our_deserializer_reads_what_confluent_kafkas_serializer_wrote(registry_url: str) -> None:
    topic = unique("topic")
    confluent = ConfluentAvroSerializer(SchemaRegistryClient({"url": registry_url}), V1)
    data = confluent(ROW, SerializationContext(topic, MessageField.KEY))

    async def consume() -> None:
        async with counted(registry_url) as c:
            deserializer = AvroDeserializer(c.client)
            assert await deserializer.deserialize(data) == ROW
            assert deserializer.deserialize_cached(data) == ROW
            found = await c.client.lookup(f"{topic}-key", V1)
            assert unframe(data)[0] == found.schema_id

    run(consume)


def test_without_auto_register_an_unregistered_schema_is_an_error_not_a_registration(
    registry_url: str,
) -> None:
    topic = unique("topic")

    async def scenario() -> None:
        async with counted(registry_url) as c:
            serializer = AvroSerializer(c.client, auto_register=False)
            with pytest.raises(RegistryError) as missing:
                await serializer.prepare(topic, V1, is_key=False)
            assert missing.value.status == 404
            assert f"{topic}-value" not in await c.client.subjects()
            registered = await c.client.register(f"{topic}-value", V1)
            prepared = await serializer.prepare(topic, V1, is_key=False)
            assert prepared.schema_id == registered

    run(scenario)


def test_use_latest_writes_with_the_subjects_newest_schema(registry_url: str) -> None:
    topic = unique("topic")
    v2 = schema(("id", "int"), ("name", "string"), ("note", ["null", "string"]))

    async def scenario() -> None:
        async with counted(registry_url) as c:
            await c.client.register(f"{topic}-value", V1)
            newest = await c.client.register(f"{topic}-value", v2)
            serializer = AvroSerializer(c.client, use_latest=True)
            prepared = await serializer.prepare(topic, V1, is_key=False)
            assert prepared.schema_id == newest
            data = serializer.serialize(prepared, {**ROW, "note": "hi"})
            deserializer = AvroDeserializer(c.client, reader_schema=V1)
            assert await deserializer.deserialize(data) == ROW

    run(scenario)
