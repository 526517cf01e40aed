"""Benchmark of the schema registry server, its client and the Avro serde.

Measures, against a throwaway local registry (or ``--url``):

* registrations/s of distinct schemas (one subject each), ``--concurrency`` in flight;
* lookups/s of a schema by id (GET /schemas/ids/N) and by content
  (POST /subjects/S), bypassing the client's cache, and the same through the
  cache;
* records/s of ``AvroSerializer.serialize`` and ``serialize_many`` on a
  10-field record, of ``AvroDeserializer.deserialize_cached``, and of
  confluent-kafka's AvroSerializer for reference.

Usage::

    python bench/registry.py [--url URL] [--concurrency 16] [--schemas 300]
                             [--lookups 3000] [--records 200000]

Invariants: prints a table and nothing else on stdout; a local registry it
started is stopped on exit; the default sizes finish well within a minute on
two cores. Figures depend on the machine; no test asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer as ConfluentAvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from cdc.demo.throwaway import LocalRegistry
from schema_registry.client import RegistryClient, SchemaId
from schema_registry.serde import AvroDeserializer, AvroSerializer, PreparedSchema

RECORD_SCHEMA = {
    "type": "record",
    "name": "Value",
    "namespace": "bench.public.orders",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer_id", "type": "int"},
        {"name": "status", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "quantity", "type": "int"},
        {"name": "paid", "type": "boolean"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "sku", "type": "string"},
        {"name": "discount", "type": ["null", "double"], "default": None},
    ],
}


def sample_record(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "customer_id": i % 10_000,
        "status": "shipped" if i % 3 else "pending",
        "amount": i * 1.25,
        "quantity": i % 7,
        "paid": bool(i % 2),
        "note": None if i % 5 else "gift wrap",
        "created_at": 1_700_000_000_000_000 + i,
        "sku": f"SKU-{i % 997:05d}",
        "discount": None if i % 4 else 0.1,
    }


def distinct_schema(run: str, i: int) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": f"S{i}",
            "namespace": f"bench.r{run}",
            "fields": [{"name": "id", "type": "long"}, {"name": f"f{i}", "type": "string"}],
        }
    )


@dataclass(frozen=True, slots=True)
class Figure:
    operation: str
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


async def timed_concurrently(
    operation: str, count: int, *, concurrency: int, call: Callable[[int], Awaitable[object]]
) -> Figure:
    """Run ``call(0..count-1)`` with at most ``concurrency`` in flight; time the whole."""
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return Figure(operation, count, time.perf_counter() - start)


def timed(operation: str, count: int, *, body: Callable[[], object]) -> Figure:
    start = time.perf_counter()
    body()
    return Figure(operation, count, time.perf_counter() - start)


async def registry_figures(
    url: str, *, schemas: int, lookups: int, concurrency: int
) -> list[Figure]:
    run = uuid.uuid4().hex[:8]
    texts = [distinct_schema(run, i) for i in range(schemas)]
    subjects = [f"bench-{run}-{i}-value" for i in range(schemas)]
    ids: list[SchemaId] = [SchemaId(0)] * schemas
    figures: list[Figure] = []
    async with RegistryClient.from_url(url) as client:

        async def register(i: int) -> None:
            ids[i] = await client.register(subjects[i], texts[i])

        figures.append(
            await timed_concurrently(
                "register distinct schemas", schemas, concurrency=concurrency, call=register
            )
        )

        async def get_by_id(i: int) -> None:
            await client.rest.request("GET", f"/schemas/ids/{ids[i % schemas]}")

        figures.append(
            await timed_concurrently(
                "GET schema by id (uncached)", lookups, concurrency=concurrency, call=get_by_id
            )
        )

        async def post_lookup(i: int) -> None:
            k = i % schemas
            await client.rest.request("POST", f"/subjects/{subjects[k]}", body={"schema": texts[k]})

        figures.append(
            await timed_concurrently(
                "POST lookup (uncached)", lookups, concurrency=concurrency, call=post_lookup
            )
        )

        async def cached_get(i: int) -> None:
            await client.get_schema(ids[i % schemas])

        figures.append(
            await timed_concurrently(
                "get_schema (client cache)", lookups * 100, concurrency=1, call=cached_get
            )
        )
        for subject in subjects:
            await client.delete_subject(subject)
            await client.delete_subject(subject, permanent=True)
    return figures


async def serde_figures(url: str, *, records: int) -> list[Figure]:
    """Encoding/decoding rates (synchronous work timed inside one event loop)."""
    rows = [sample_record(i) for i in range(records)]
    async with RegistryClient.from_url(url) as client:
        serializer = AvroSerializer(client)
        prepared: PreparedSchema = await serializer.prepare(
            f"bench-{uuid.uuid4().hex[:8]}", RECORD_SCHEMA, is_key=False
        )
        deserializer = AvroDeserializer(client)
        deserializer.remember(prepared.schema_id, prepared.schema)

        def one_by_one() -> None:
            serialize = serializer.serialize
            for row in rows:
                serialize(prepared, row)

        def batched(size: int = 1000) -> None:
            for start in range(0, records, size):
                serializer.serialize_many(prepared, rows[start : start + size])

        encoded = serializer.serialize_many(prepared, rows)

        def decode(data: Iterable[bytes]) -> None:
            read = deserializer.deserialize_cached
            for item in data:
                read(item)

        confluent = ConfluentAvroSerializer(
            SchemaRegistryClient({"url": url}),
            prepared.schema,
            conf={"auto.register.schemas": True},
        )
        ctx = SerializationContext(prepared.subject.removesuffix("-value"), MessageField.VALUE)
        reference = rows[: max(1, records // 4)]

        def confluent_serialize() -> None:
            for row in reference:
                confluent(row, ctx)

        return [
            timed("serialize (10 fields)", records, body=one_by_one),
            timed("serialize_many, batches of 1000", records, body=batched),
            timed("deserialize_cached", records, body=lambda: decode(encoded)),
            timed("confluent-kafka AvroSerializer", len(reference), body=confluent_serialize),
        ]


def print_table(figures: list[Figure], *, url: str, concurrency: int) -> None:
    width = max(len(f.operation) for f in figures)
    print(f"registry {url}, concurrency {concurrency}")
    print(f"{'operation':<{width}}  {'count':>9}  {'seconds':>8}  {'per second':>12}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 8}  {'-' * 12}")
    for f in figures:
        print(f"{f.operation:<{width}}  {f.count:>9}  {f.seconds:>8.3f}  {f.rate:>12,.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing registry (default: start a local one)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--schemas", type=int, default=300)
    parser.add_argument("--lookups", type=int, default=3000)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args(argv)

    local = None if args.url else LocalRegistry().start()
    url = args.url or (local.url if local else "")
    try:
        figures = asyncio.run(
            registry_figures(
                url, schemas=args.schemas, lookups=args.lookups, concurrency=args.concurrency
            )
        )
        figures += asyncio.run(serde_figures(url, records=args.records))
    finally:
        if local is not None:
            local.stop()
    print_table(figures, url=url, concurrency=args.concurrency)


if __name__ == "__main__":
    main()
