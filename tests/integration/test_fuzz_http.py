"""Property-based fuzzing of the HTTP surfaces: the inbound endpoint, the admin API, the registry.

Each runs as the real server (uvicorn on a loopback port, in a thread of the test process)
over real collaborators: the inbound endpoint queues on the session's broker, the admin
API serves a running ``Sync`` (state store in PostgreSQL, consumers on the broker), the
registry stores in SQLite. Hypothesis generates the requests: methods, paths with any
bytes percent-encoded, signed and unsigned bodies, tokens, idempotency keys, schemas.

Properties: no answer is a 5xx (the one exception: ``GET /ready`` answers 503 with
``ready: false`` when a probe failed, as documented), the server keeps answering, and a
refused request writes nothing: no record on the inbound topic beyond one per 202 (counted
after a later accepted marker), no integration paused or resumed without the token, no
row of the registry's store changed by a 4xx.

Bounded for CI, with a fixed seed (``derandomize``) so a run is reproducible: 150 cases
for the inbound endpoint, 120 for the admin API, 200 for the registry (about 5 s in all
on two cores).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from cdc.config import Config, parse_config
from cdc.config.names import inbound_topic
from cdc.inbound.endpoint import sign
from cdc.ops.admin_api import AdminApi
from cdc.sync.runtime import Sync
from mappers.examples_inbound import crm_inbound_config
from schema_registry.server import create_app
from schema_registry.service import RegistryService
from schema_registry.storage_url import open_storage

INBOUND_CASES = 150
ADMIN_CASES = 120
REGISTRY_CASES = 200

SECRET = "fuzz-inbound-secret"
TOKEN = "fuzz-admin-token"


def fuzz_settings(cases: int) -> settings:
    return settings(
        max_examples=cases,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# --------------------------------------------------------------------------- serving


@contextmanager
def serving_admin(api: AdminApi, *, sync: Sync | None = None) -> Iterator[str]:
    """``api`` (and ``sync``, if given) served in a thread's event loop; yields the base URL."""
    api.bind()
    base = f"http://127.0.0.1:{api.port}"
    loop = asyncio.new_event_loop()
    stop: asyncio.Event | None = None
    started = threading.Event()

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        started.set()
        runs = [api.serve(stop)]
        if sync is not None:
            runs.append(sync.run(stop))
        await asyncio.gather(*runs)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        wait_answering(base + "/health")
        yield base
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """An ASGI app under uvicorn on a free loopback port, in a thread."""
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only then (else each answer waits ~40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_answering(f"http://127.0.0.1:{port}/")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_answering(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.05)


# --------------------------------------------------------------------------- strategies

# Text of every kind, and raw bytes (percent-encoded into a path, so invalid UTF-8 too).
any_text = st.text(max_size=60) | st.sampled_from(["", ".", "..", "../../config", "a/b", "x" * 300])
segment = any_text.map(lambda t: quote(t, safe="")) | st.binary(max_size=30).map(
    lambda b: "".join(f"%{byte:02X}" for byte in b)
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Header values h11 lets a client send (no CR, LF, NUL or other controls), UTF-8 encoded.
header_value = st.text(
    st.characters(min_codepoint=0x20, blacklist_characters="\x7f"), max_size=220
).map(lambda t: t.strip().encode())


@st.composite
def contacts(draw: st.DrawFn) -> dict[str, Any]:
    """Contact bodies, valid four times in five per field (names, times, emails, extras)."""
    contact: dict[str, Any] = {
        "name": mostly(draw, draw(st.text(min_size=1, max_size=200)), st.text(max_size=210)),
        "updated_at": mostly(
            draw,
            draw(st.datetimes(timezones=st.just(dt.UTC))).isoformat(),
            st.text(max_size=30) | st.datetimes().map(dt.datetime.isoformat) | json_value,
        ),
    }
    if draw(st.booleans()):
        contact["email"] = mostly(draw, "ada@example.com", st.text(max_size=40))
    if draw(st.booleans()):
        contact["phone"] = draw(st.text(max_size=60))
    if not draw(st.integers(0, 9)):
        contact[draw(st.text(max_size=10))] = draw(json_value)
    return contact


# --------------------------------------------------------------------------- inbound


def inbound_config(bootstrap: str, registry_url: str, prefix: str) -> Config:
    return parse_config(
        {
            "source": {"dsn": "postgresql://cdc@127.0.0.1:1/app", "tables": ["public.customers"]},
            "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix},
            "registry": {"url": registry_url},
            "admin": {"listen": "127.0.0.1:0"},
            "integrations": {
                "crm": {
                    "topics": [f"{prefix}.public.customers"],
                    "mapper": "mappers.examples:customer_to_contact",
                    "sink": {"type": "http", "url": "http://127.0.0.1:1/contacts/{key}"},
                    "inbound": crm_inbound_config(secret_env="CRM_INBOUND_SECRET"),
                }
            },
        },
        env={"CRM_INBOUND_SECRET": SECRET},
    )


def records_on(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"fuzz-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        partitions = meta.topics[topic].partitions if topic in meta.topics else {}
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


@dataclass
class InboundRequest:
    method: str
    path: str
    body: bytes
    headers: dict[str, bytes]


def mostly(draw: st.DrawFn, usual: Any, other: st.SearchStrategy[Any]) -> Any:
    """``usual`` four times in five, else something drawn from ``other``: the fuzzer goes past
    the first door (routing, authentication) most of the time."""
    return usual if draw(st.sampled_from([True, True, True, True, False])) else draw(other)


@st.composite
def inbound_requests(draw: st.DrawFn) -> InboundRequest:
    method = draw(st.sampled_from(["PUT", "PUT", "POST", "POST", "DELETE", "PATCH", "GET"]))
    integration = mostly(draw, "crm", segment)
    entity = mostly(draw, "contact", segment)
    external_id = mostly(
        draw,
        f"crm-{draw(st.integers(0, 10**6))}",
        st.text(min_size=1, max_size=20).map(lambda t: quote(t, safe="")) | segment,
    )
    body = mostly(
        draw,
        json.dumps(draw(contacts())).encode(),
        json_value.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200),
    )
    headers: dict[str, bytes] = {}
    key = mostly(draw, draw(st.uuids()).hex.encode(), st.none() | header_value)
    if key is not None:
        headers["Idempotency-Key"] = key
    signature = draw(st.sampled_from(["right", "right", "right", "wrong", "none", "bearer"]))
    if signature == "right":
        headers["X-Signature"] = sign(SECRET.encode(), body).encode()
    elif signature == "wrong":
        headers["X-Signature"] = sign(b"another secret", body).encode()
    elif signature == "bearer":
        headers["Authorization"] = (b"Bearer " + draw(header_value)).strip()
    path = f"/inbound/{integration}/{entity}/{external_id}"
    return InboundRequest(method, path, body, headers)


def test_fuzzed_inbound_requests_never_5xx_and_only_202s_reach_the_topic(
    kafka_bootstrap: str, registry_url: str, topic_prefix: str
) -> None:
    """150 generated requests (INBOUND_CASES) against the inbound endpoint."""
    config = inbound_config(kafka_bootstrap, registry_url, topic_prefix)
    topic = inbound_topic(config, "crm")
    api = AdminApi(config)
    accepted: list[str] = []
    statuses: set[int] = set()
    with serving_admin(api) as base, httpx.Client(base_url=base, timeout=30) as http:

        @fuzz_settings(INBOUND_CASES)
        @given(request=inbound_requests())
        def one(request: InboundRequest) -> None:
            response = http.request(
                request.method, request.path, content=request.body, headers=request.headers
            )
            statuses.add(response.status_code)
            assert response.status_code < 500, (request, response.text)
            if response.status_code == 202:
                accepted.append(response.json()["idempotency_key"])
            elif response.status_code in (400, 401, 413, 422):
                assert "error" in response.json()

        one()
        # The marker: one more accepted change; once it is acknowledged, every earlier
        # record is on the topic too (one producer, one partition, in order).
        body = json.dumps({"name": "marker", "updated_at": "2026-01-01T00:00:00Z"}).encode()
        marker = http.put(
            "/inbound/crm/contact/marker",
            content=body,
            headers={"Idempotency-Key": "marker", "X-Signature": sign(SECRET.encode(), body)},
        )
        assert marker.status_code == 202, marker.text
    assert {400, 401, 404, 422, 202} <= statuses, statuses  # the generator reaches every door
    assert records_on(kafka_bootstrap, topic) == len(accepted) + 1


# --------------------------------------------------------------------------- admin API


@dataclass
class AdminRequest:
    method: str
    path: str
    authorization: bytes | None
    body: bytes


@st.composite
def admin_requests(draw: st.DrawFn) -> AdminRequest:
    kind = draw(st.sampled_from(["control", "read", "other"]))
    if kind == "control":  # pause or resume, mostly as a client would send them
        name = mostly(draw, "crm", st.just("nope") | segment)
        path = f"/integrations/{name}/{draw(st.sampled_from(['pause', 'resume']))}"
        method = mostly(draw, "POST", st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]))
    else:
        path = (
            draw(st.sampled_from(["/health", "/ready", "/metrics", "/status"]))
            if kind == "read"
            else draw(segment.map(lambda s: "/" + s) | segment.map(lambda s: f"/integrations/{s}"))
        )
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]))
    authorization = draw(
        st.sampled_from(["token", "none", "other"]).flatmap(
            lambda how: (
                st.sampled_from([f"Bearer {TOKEN}".encode(), f"bearer {TOKEN}".encode()])
                if how == "token"
                else st.none()
                if how == "none"
                else header_value | header_value.map(lambda v: (b"Bearer " + v).strip())
            )
        )
    )
    return AdminRequest(method, path, authorization, draw(st.binary(max_size=100)))


def test_fuzzed_admin_requests_never_5xx_and_only_the_token_pauses(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str
) -> None:
    """120 generated requests (ADMIN_CASES) against the admin API of a running sync."""
    config = parse_config(
        {
            "source": {"dsn": pg_dsn, "tables": ["public.customers"]},
            "kafka": {"bootstrap_servers": kafka_bootstrap, "topic_prefix": topic_prefix},
            "registry": {"url": registry_url},
            "admin": {"listen": "127.0.0.1:0", "token": TOKEN, "probe_interval_s": 0.5},
            "integrations": {
                "crm": {
                    "topics": [f"{topic_prefix}.public.customers"],
                    "mapper": "mappers.examples:customer_to_contact",
                    "sink": {"type": "kafka", "topic": f"{topic_prefix}.entities"},
                }
            },
        },
        env={},
    )
    sync = Sync(config)
    api = AdminApi(config, sync=sync)
    paused = [False]
    seen: set[tuple[str, int]] = set()
    with serving_admin(api, sync=sync) as base, httpx.Client(base_url=base, timeout=30) as http:
        deadline = time.monotonic() + 60
        while http.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, http.get("/ready").text
            time.sleep(0.1)

        @fuzz_settings(ADMIN_CASES)
        @given(request=admin_requests())
        def one(request: AdminRequest) -> None:
            headers = (
                {} if request.authorization is None else {"Authorization": request.authorization}
            )
            response = http.request(
                request.method, request.path, headers=headers, content=request.body
            )
            if request.path == "/ready" and response.status_code == 503:
                assert response.json()["ready"] is False  # a failed probe, said so
            else:
                assert response.status_code < 500, (request, response.text)
            authorized = request.authorization in (
                f"Bearer {TOKEN}".encode(),
                f"bearer {TOKEN}".encode(),
            )
            protected = request.path in ("/metrics", "/status") or request.path.startswith(
                "/integrations/"
            )
            if protected and not authorized and response.status_code not in (404, 405):
                assert response.status_code == 401, (request, response.text)
            if response.status_code == 200 and request.method == "POST":
                if request.path == "/integrations/crm/pause":
                    paused[0] = True
                elif request.path == "/integrations/crm/resume":
                    paused[0] = False
            assert sync.workers["crm"].stats.paused is paused[0], request
            seen.add((request.path.rsplit("/", 1)[-1], response.status_code))

        one()
        assert http.get("/health").status_code == 200  # still answering
    # The generator reached both sides of the token: pauses and resumes done, others refused.
    assert {("pause", 200), ("resume", 200)} <= seen, seen
    assert {("pause", 401), ("resume", 401)} & seen, seen


# --------------------------------------------------------------------------- registry

ROW = json.dumps({"type": "record", "name": "Row", "fields": [{"name": "id", "type": "int"}]})


def avro_like() -> st.SearchStrategy[Any]:
    """Schemas near the valid ones: records with generated names, fields and types."""
    primitive = st.sampled_from(["int", "long", "string", "bytes", "null", "boolean", "nope"])
    return st.recursive(
        primitive | any_text,
        lambda inner: (
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["record", "array", "map", "enum", "fixed"]) | any_text,
                    "name": any_text,
                },
                optional={
                    "fields": st.lists(
                        st.fixed_dictionaries({"name": any_text, "type": inner}), max_size=3
                    ),
                    "items": inner,
                    "values": inner,
                    "symbols": st.lists(any_text, max_size=3),
                    "size": st.integers(),
                    "default": json_value,
                },
            )
            | st.lists(inner, max_size=3)
        ),
        max_leaves=10,
    )


@dataclass
class RegistryRequest:
    method: str
    path: str
    body: bytes
    content_type: str | None


# The registry's operations (method, path, body kind); {s} a subject, {v} a version or id.
REGISTRY_OPERATIONS = [
    ("POST", "/subjects/{s}/versions", "schema"),
    ("POST", "/subjects/{s}/versions", "schema"),
    ("POST", "/subjects/{s}", "schema"),
    ("POST", "/compatibility/subjects/{s}/versions/{v}", "schema"),
    ("POST", "/compatibility/subjects/{s}/versions", "schema"),
    ("PUT", "/config/{s}", "config"),
    ("PUT", "/config", "config"),
    ("PUT", "/mode/{s}", "mode"),
    ("GET", "/subjects/{s}/versions/{v}", None),
    ("GET", "/subjects/{s}/versions/{v}/schema", None),
    ("GET", "/schemas/ids/{v}", None),
    ("GET", "/subjects/{s}/versions", None),
    ("DELETE", "/subjects/{s}/versions/{v}", None),
    ("DELETE", "/subjects/{s}", None),
    ("DELETE", "/config/{s}", None),
    ("DELETE", "/mode/{s}", None),
]
ROW2 = json.dumps(
    {
        "type": "record",
        "name": "Row",
        "fields": [
            {"name": "id", "type": "int"},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
)
ROW_INCOMPATIBLE = json.dumps(
    {"type": "record", "name": "Row", "fields": [{"name": "id", "type": "string"}]}
)


@st.composite
def registry_requests(draw: st.DrawFn) -> RegistryRequest:
    subject = mostly(draw, draw(st.sampled_from(["fuzz-a", "fuzz-b"])), segment)
    version = mostly(
        draw,
        draw(st.sampled_from(["1", "2", "latest"])),
        st.sampled_from(["-1", "0", "99999999999"]) | segment,
    )
    method, template, kind = draw(st.sampled_from(REGISTRY_OPERATIONS))
    path = template.format(s=subject, v=version)
    if not draw(st.integers(0, 5)):  # now and then a method or path of no operation
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
        path = draw(segment.map(lambda s: "/" + s) | st.just(path + "/x"))
    schema = mostly(
        draw,
        draw(st.sampled_from([ROW, ROW2, ROW_INCOMPATIBLE])),
        avro_like().map(json.dumps)
        | st.sampled_from([2, 299, 301, 1200, 5000]).map(lambda n: "[" * n + '"int"' + "]" * n)
        | any_text,
    )
    if kind == "schema":
        payload: Any = {"schema": schema}
        if not draw(st.integers(0, 3)):
            payload[draw(st.sampled_from(["schemaType", "references", "id", "version"]))] = draw(
                st.sampled_from(["AVRO", "JSON", "PROTOBUF"]) | json_value
            )
    elif kind == "config":
        payload = {
            "compatibility": mostly(
                draw, draw(st.sampled_from(["NONE", "FULL", "BACKWARD"])), any_text | json_value
            )
        }
    elif kind == "mode":
        payload = {"mode": mostly(draw, draw(st.sampled_from(["READONLY", "READWRITE"])), any_text)}
    else:
        payload = draw(json_value)
    body = mostly(draw, json.dumps(payload).encode(), st.binary(max_size=100))
    content_type = mostly(
        draw,
        "application/vnd.schemaregistry.v1+json",
        st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])
        | st.none(),
    )
    return RegistryRequest(method, path, body, content_type)


def store_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(db) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}


def test_fuzzed_registry_requests_never_5xx_and_refusals_change_nothing(tmp_path: Path) -> None:
    """200 generated requests (REGISTRY_CASES) against the registry's REST API."""
    db = tmp_path / "registry.db"
    storage = open_storage(f"sqlite:///{db}")
    app = create_app(RegistryService(storage))
    snapshot: Callable[[], dict[str, list[tuple[Any, ...]]]] = lambda: store_rows(db)  # noqa: E731
    statuses: set[int] = set()
    try:
        with serving(app) as base, httpx.Client(base_url=base, timeout=30) as http:
            seeded = http.post("/subjects/fuzz-a/versions", json={"schema": ROW})
            assert seeded.status_code == 200, seeded.text

            @fuzz_settings(REGISTRY_CASES)
            @given(request=registry_requests())
            def one(request: RegistryRequest) -> None:
                before = snapshot()
                headers = (
                    {} if request.content_type is None else {"Content-Type": request.content_type}
                )
                response = http.request(
                    request.method, request.path, content=request.body, headers=headers
                )
                assert response.status_code < 500, (request, response.text[:500])
                statuses.add(response.status_code)
                if response.status_code >= 400:
                    assert snapshot() == before, (request, response.text[:500])
                    assert "error_code" in response.json()

            one()
            assert http.get("/subjects").status_code == 200  # still answering
    finally:
        storage.close()
    # The generator reached the operations and their refusals.
    assert {200, 404, 422} <= statuses and {405, 415} & statuses, statuses
