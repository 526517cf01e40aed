"""The target side of a reconcile run: what each kind of sink holds, read back.

A ``Target`` answers two questions: ``fetch(entity, keys)``, the live entities held for
these keys (fields, when the target can show them, and the version last applied), and
``live_keys()``, every live entity key, in chunks (to find entities no source row maps
to). Reading never writes.

- PostgreSQL sink: the target table itself (``_cdc_key``, ``_cdc_version`` and one column
  per field; ``cdc.sync.sinks.postgres``); a table not created yet holds nothing.
- HTTP sink: the state store's ``versions`` (live versions and tombstones the sink saved);
  with the integration's ``verify_url``, the target's own answer to a GET per key (404:
  not there; 2xx: its JSON object, or its ``verify_fields_at`` member, gives the fields).
- Kafka sink: the compacted entity topic, read from the start to its end offsets when the
  target opens and again at each ``refresh`` (before keys are checked again): the last
  record per key (a null value is a delete); held in memory for the run.

A target that cannot be reached raises ``SinkUnavailable`` (the run ends as failed, with
the reason); messages never hold a password.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import SecretStr

from cdc.config import Config, HttpSinkConfig, KafkaSinkConfig, PostgresSinkConfig
from cdc.core.errors import SinkUnavailable, first_line
from cdc.core.secrets import redact_dsn
from cdc.state.store import StateStore
from cdc.sync.sinks.postgres import KEY_COLUMN, VERSION_COLUMN
from mappers.entity import Version

__all__ = ["Held", "Target", "open_target"]

_KEYS_PER_QUERY: Final = 5000
_HTTP_IN_FLIGHT: Final = 8
_KAFKA_READ_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Held:
    """A live entity in the target: its fields (None: the target cannot show them) and
    the version it was last written at (None: unknown)."""

    fields: dict[str, Any] | None
    version: Version | None


class Target(Protocol):
    """What a reconcile run reads of a sink; see the module docstring."""

    kind: str

    async def fetch(self, entity: str, keys: Sequence[str]) -> dict[str, Held]:
        """The live entities among ``keys`` (absent or deleted ones are left out)."""
        ...

    def live_keys(self) -> AsyncIterator[list[tuple[str, str]]]:
        """Every live ``(entity, key)`` (entity ``""`` when the target does not keep it)."""
        ...

    async def refresh(self) -> None:
        """Forget what was read so far (before keys are checked again)."""
        ...

    async def close(self) -> None: ...


async def open_target(config: Config, name: str, *, state: StateStore) -> Target:
    """The target of integration ``name``, connected."""
    integration = config.integrations[name]
    sink = integration.sink
    if isinstance(sink, PostgresSinkConfig):
        return await PostgresTarget.open(sink)
    if isinstance(sink, HttpSinkConfig):
        return HttpTarget(
            name,
            sink,
            state=state,
            verify_url=None if integration.verify_url is None else str(integration.verify_url),
            fields_at=integration.verify_fields_at,
        )
    assert isinstance(sink, KafkaSinkConfig)
    return await KafkaTarget.open(config, sink)


# ----------------------------------------------------------------------------- PostgreSQL


class PostgresTarget:
    kind = "postgres"

    def __init__(self, conn: psycopg.AsyncConnection[Any], table: sql.Identifier) -> None:
        self._conn = conn
        self._table = table
        self._exists: bool | None = None

    @classmethod
    async def open(cls, config: PostgresSinkConfig) -> PostgresTarget:
        dsn = config.dsn.get_secret_value()
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise SinkUnavailable(
                f"target database {redact_dsn(dsn)} unreachable: {first_line(exc)}"
            ) from None
        schema, _, table = config.table.partition(".")
        return cls(conn, sql.Identifier(schema, table))

    async def _table_exists(self) -> bool:
        if self._exists is None:
            text = self._table.as_string(self._conn)
            cur = await self._conn.execute("SELECT to_regclass(%s)", (text,))
            row = await cur.fetchone()
            self._exists = row is not None and row[0] is not None
        return self._exists

    async def fetch(self, entity: str, keys: Sequence[str]) -> dict[str, Held]:
        del entity
        if not keys:
            return {}
        try:
            if not await self._table_exists():
                return {}
            out: dict[str, Held] = {}
            async with self._conn.cursor(row_factory=dict_row) as cur:
                for i in range(0, len(keys), _KEYS_PER_QUERY):
                    await cur.execute(
                        sql.SQL("SELECT * FROM {} WHERE {} = ANY(%s)").format(
                            self._table, sql.Identifier(KEY_COLUMN)
                        ),
                        (list(keys[i : i + _KEYS_PER_QUERY]),),
                    )
                    for row in await cur.fetchall():
                        key = str(row.pop(KEY_COLUMN))
                        version = row.pop(VERSION_COLUMN, None)
                        held = None if version is None else Version.from_bytes(bytes(version))
                        out[key] = Held(row, held)
            return out
        except psycopg.OperationalError as exc:
            raise SinkUnavailable(f"target database: {first_line(exc)}") from None

    async def live_keys(self) -> AsyncIterator[list[tuple[str, str]]]:
        try:
            if not await self._table_exists():
                return
            after: str | None = None
            key = sql.Identifier(KEY_COLUMN)
            while True:
                where = sql.SQL("") if after is None else sql.SQL(" WHERE {} > %s").format(key)
                cur = await self._conn.execute(
                    sql.SQL("SELECT {} FROM {}{} ORDER BY {} LIMIT {}").format(
                        key, self._table, where, key, sql.Literal(_KEYS_PER_QUERY)
                    ),
                    () if after is None else (after,),
                )
                rows = [str(r[0]) for r in await cur.fetchall()]
                if rows:
                    yield [("", k) for k in rows]
                if len(rows) < _KEYS_PER_QUERY:
                    return
                after = rows[-1]
        except psycopg.OperationalError as exc:
            raise SinkUnavailable(f"target database: {first_line(exc)}") from None

    async def refresh(self) -> None:
        """Reads go to the table each time."""

    async def close(self) -> None:
        await self._conn.close()


# ----------------------------------------------------------------------------- HTTP


class HttpTarget:
    kind = "http"

    def __init__(
        self,
        name: str,
        config: HttpSinkConfig,
        *,
        state: StateStore,
        verify_url: str | None,
        fields_at: str | None,
    ) -> None:
        self._name = name
        self._state = state
        self._verify_url = verify_url
        self._fields_at = fields_at
        self._headers: dict[str, str] = {}
        for header, value in config.headers.items():
            if isinstance(value, SecretStr):
                self._headers[header] = value.get_secret_value()
            elif isinstance(value, bool):
                self._headers[header] = "true" if value else "false"
            else:
                self._headers[header] = str(value)
        self._client = httpx.AsyncClient(timeout=config.timeout_s)
        self._slots = asyncio.Semaphore(_HTTP_IN_FLIGHT)

    async def fetch(self, entity: str, keys: Sequence[str]) -> dict[str, Held]:
        stored = await self._state.versions(self._name, entity, keys=keys)
        live = {k: Held(None, v) for k, (v, deleted) in stored.items() if not deleted}
        if self._verify_url is None:
            return live
        answers = await asyncio.gather(*(self._get(entity, k) for k in keys))
        out: dict[str, Held] = {}
        for key, fields in zip(keys, answers, strict=True):
            if fields is not None:
                held = live.get(key)
                out[key] = Held(fields, None if held is None else held.version)
        return out

    async def _get(self, entity: str, key: str) -> dict[str, Any] | None:
        assert self._verify_url is not None
        url = self._verify_url.replace("{key}", key).replace("{entity}", entity)
        async with self._slots:
            try:
                response = await self._client.get(url, headers=self._headers)
            except httpx.HTTPError as exc:
                raise SinkUnavailable(
                    f"verify_url {redact_dsn(url)}: {type(exc).__name__}: {first_line(exc)}"
                ) from None
        if response.status_code in (404, 410):
            return None
        if response.status_code >= 300:
            raise SinkUnavailable(
                f"verify_url {redact_dsn(url)} answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
        except ValueError:
            raise SinkUnavailable(f"verify_url {redact_dsn(url)}: the answer is not JSON") from None
        if self._fields_at is not None and isinstance(body, dict):
            body = body.get(self._fields_at)
        return body if isinstance(body, dict) else {}

    async def live_keys(self) -> AsyncIterator[list[tuple[str, str]]]:
        after: tuple[str, str] | None = None
        while True:
            rows = await self._state.live_keys(self._name, after=after, limit=_KEYS_PER_QUERY)
            if rows:
                yield rows
            if len(rows) < _KEYS_PER_QUERY:
                return
            after = rows[-1]

    async def refresh(self) -> None:
        """Reads go to the state store and the target each time."""

    async def close(self) -> None:
        await self._client.aclose()


# ----------------------------------------------------------------------------- Kafka


class KafkaTarget:
    kind = "kafka"

    def __init__(
        self, records: dict[str, tuple[str, Held | None]], *, settings: dict[str, Any], topic: str
    ) -> None:
        self._records = records
        self._settings = settings
        self._topic = topic

    async def refresh(self) -> None:
        """Read the topic again: the records held are those of when it was last read."""
        self._records = await asyncio.to_thread(_read_topic, self._settings, self._topic)

    @classmethod
    async def open(cls, config: Config, sink: KafkaSinkConfig) -> KafkaTarget:
        settings: dict[str, Any] = dict(config.kafka.client_properties())
        for k, v in sink.properties.items():
            settings[k] = v.get_secret_value() if isinstance(v, SecretStr) else v
        if sink.bootstrap_servers is not None:
            settings["bootstrap.servers"] = sink.bootstrap_servers
        settings.update(
            {
                "group.id": f"cdcsync.reconcile.{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        for key in ("transactional.id", "enable.idempotence", "acks", "linger.ms"):
            settings.pop(key, None)
        records = await asyncio.to_thread(_read_topic, settings, sink.topic)
        return cls(records, settings=settings, topic=sink.topic)

    async def fetch(self, entity: str, keys: Sequence[str]) -> dict[str, Held]:
        del entity
        out: dict[str, Held] = {}
        for key in keys:
            found = self._records.get(key)
            if found is not None and found[1] is not None:
                out[key] = found[1]
        return out

    async def live_keys(self) -> AsyncIterator[list[tuple[str, str]]]:
        live = [(entity, k) for k, (entity, held) in self._records.items() if held is not None]
        for i in range(0, len(live), _KEYS_PER_QUERY):
            yield live[i : i + _KEYS_PER_QUERY]

    async def close(self) -> None:
        self._records.clear()


def _read_topic(settings: dict[str, Any], topic: str) -> dict[str, tuple[str, Held | None]]:
    """The last record per key of ``topic``, read up to its end offsets of now."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition  # noqa: PLC0415

    deadline = time.monotonic() + _KAFKA_READ_TIMEOUT_S
    try:
        consumer = Consumer(settings)
    except KafkaException as exc:
        raise SinkUnavailable(f"kafka target {topic}: {exc}") from None
    records: dict[str, tuple[str, Held | None]] = {}
    try:
        meta = consumer.list_topics(topic, timeout=10)
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            return records  # nothing produced yet
        ends: dict[int, int] = {}
        starts: list[Any] = []
        for p in info.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, low))
        if not starts:
            return records
        consumer.assign(starts)
        # Up to the end offsets, then on until the topic is quiet or for at most a second:
        # a broker may report an end offset inside the last batch.
        reached: float | None = None
        while True:
            now = time.monotonic()
            if reached is None and not ends:
                reached = now
            if reached is not None and now > reached + 1.0:
                break
            if now > deadline:
                raise SinkUnavailable(f"kafka target {topic}: reading it timed out")
            msg = consumer.poll(0.2)
            if msg is None:
                if reached is not None:
                    break
                continue
            if msg.error() is not None:
                raise SinkUnavailable(f"kafka target {topic}: {msg.error()}")
            _take(records, msg)
            partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
    except KafkaException as exc:
        raise SinkUnavailable(f"kafka target {topic}: {exc}") from None
    finally:
        consumer.close()
    return records


def _take(records: dict[str, tuple[str, Held | None]], msg: Any) -> None:
    raw_key = msg.key()
    if raw_key is None:
        return
    key = raw_key.decode("utf-8", "replace")
    headers = dict(msg.headers() or [])
    entity = bytes(headers.get("cdc.entity", b"")).decode()
    value = msg.value()
    if value is None:
        records[key] = (entity, None)
        return
    try:
        body = json.loads(value)
    except ValueError:
        return
    if not isinstance(body, dict):
        return
    body.pop("_version", None)
    hex_version = body.pop("_version_bytes", None)
    version = None
    if isinstance(hex_version, str):
        try:
            version = Version.from_bytes(bytes.fromhex(hex_version))
        except ValueError:
            version = None
    records[key] = (entity, Held(body, version))
