"""Several registry processes sharing one PostgreSQL database allocate ids and versions safely."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from cdc.demo.throwaway import LocalRegistry

SERVERS = 3
CLIENTS = 6
SCHEMAS_PER_CLIENT = 12
SUBJECTS = ("orders-value", "customers-value", "items-value")


@pytest.fixture
def registries(pg_dsn: str) -> Iterator[list[str]]:
    """Registry processes on one database, started together (they race to create the tables)."""
    with ThreadPoolExecutor(SERVERS) as pool:
        servers = list(pool.map(lambda _: LocalRegistry(storage=pg_dsn).start(), range(SERVERS)))
    try:
        yield [server.url for server in servers]
    finally:
        for server in servers:
            server.stop()


def schema_text(extra_field: str) -> str:
    """A record that any other such record can read (the extra field has a default)."""
    fields = [{"name": "id", "type": "long"}, {"name": extra_field, "type": "int", "default": 0}]
    return json.dumps({"type": "record", "name": "Row", "fields": fields})


def register(url: str, subject: str, text: str) -> int:
    response = httpx.post(f"{url}/subjects/{subject}/versions", json={"schema": text}, timeout=60)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def test_concurrent_registrations_through_several_servers_never_clash(
    registries: list[str], pg_dsn: str
) -> None:
    shared = schema_text("shared")

    def client(number: int) -> list[tuple[str, str, int]]:
        done = []
        for k in range(SCHEMAS_PER_CLIENT):
            url = registries[(number + k) % SERVERS]
            subject = SUBJECTS[(number + k) % len(SUBJECTS)]
            text = schema_text(f"c{number}_{k}")
            done.append((subject, text, register(url, subject, text)))
            # The same schema under the same subject, through every server in turn.
            done.append(("shared-value", shared, register(url, "shared-value", shared)))
        return done

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [item for batch in pool.map(client, range(CLIENTS)) for item in batch]

    ids_by_text: dict[str, set[int]] = defaultdict(set)
    for _subject, text, schema_id in results:
        ids_by_text[text].add(schema_id)
    # Each schema has exactly one id, and no two schemas share one.
    assert all(len(ids) == 1 for ids in ids_by_text.values())
    all_ids = [next(iter(ids)) for ids in ids_by_text.values()]
    assert len(set(all_ids)) == len(all_ids) == CLIENTS * SCHEMAS_PER_CLIENT + 1

    for subject in SUBJECTS:
        versions = httpx.get(f"{registries[0]}/subjects/{subject}/versions").json()
        assert versions == list(range(1, len(versions) + 1))
    assert (
        sum(len(httpx.get(f"{registries[1]}/subjects/{s}/versions").json()) for s in SUBJECTS)
        == CLIENTS * SCHEMAS_PER_CLIENT
    )
    # The shared schema registered again and again through all servers is one version.
    assert httpx.get(f"{registries[2]}/subjects/shared-value/versions").json() == [1]

    # Every server answers every id with the schema it was given for.
    for text, ids in list(ids_by_text.items())[:: max(1, len(ids_by_text) // 10)]:
        for url in registries:
            got = httpx.get(f"{url}/schemas/ids/{next(iter(ids))}").json()["schema"]
            assert json.loads(got) == json.loads(text)

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT canonical)"
            " FROM schema_registry.schemas"
        ).fetchone()
    assert rows == (len(all_ids), len(all_ids), len(all_ids))


def test_the_same_schema_registered_through_two_servers_gets_one_id(
    registries: list[str],
) -> None:
    text = schema_text("twice")
    first = register(registries[0], "a-value", text)
    second = register(registries[1], "b-value", text)
    assert first == second
    assert httpx.get(f"{registries[2]}/schemas/ids/{first}/subjects").json() == [
        "a-value",
        "b-value",
    ]


def test_the_store_survives_a_restart_of_every_server(pg_dsn: str) -> None:
    server = LocalRegistry(storage=pg_dsn).start()
    try:
        schema_id = register(server.url, "kept-value", schema_text("kept"))
        httpx.put(f"{server.url}/config/kept-value", json={"compatibility": "FULL"})
    finally:
        server.stop()
    again = LocalRegistry(storage=pg_dsn).start()
    try:
        latest = httpx.get(f"{again.url}/subjects/kept-value/versions/latest").json()
        assert (latest["id"], latest["version"]) == (schema_id, 1)
        config = httpx.get(f"{again.url}/config/kept-value").json()
        assert config == {"compatibilityLevel": "FULL"}
    finally:
        again.stop()
