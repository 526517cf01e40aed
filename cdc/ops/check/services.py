"""``cdcsync check`` beyond the source: Kafka, the schema registry, the state store, the sinks.

Each ``check_*`` coroutine returns its findings (``cdc.ops.check.report.Finding``) and
never raises for a server that is down or refuses: that is a problem finding naming the
server (redacted).

Invariants: read-only (no topic, subject, schema or table is created; the registry is
only read with GET); each network call is bounded by ``timeout_s``; librdkafka's own log
lines are kept off the terminal (the findings say what went wrong).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata  # type: ignore[attr-defined]
from pydantic import SecretStr

from cdc.capture.source_setup import TableName
from cdc.config import Config, HttpSinkConfig, KafkaSinkConfig, PostgresSinkConfig
from cdc.core.errors import RegistryError, RegistryUnavailable
from cdc.core.secrets import redact_dsn
from cdc.kafka.publisher import admin_settings
from cdc.ops.check.report import Finding, bounded, pg_connect, pg_reason
from schema_registry.client import RegistryClient, RetryPolicy

__all__ = ["check_kafka", "check_registry", "check_sinks", "check_state"]

_QUIET = logging.getLogger("cdcsync.check.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


# --------------------------------------------------------------------------- Kafka


def _cluster_metadata(settings: Mapping[str, Any], timeout_s: float) -> ClusterMetadata:
    """Brokers and topics of a cluster (blocking: run in a thread)."""
    conf: dict[str, Any] = {
        **admin_settings(settings),
        "logger": _QUIET,
        "error_cb": lambda _err: None,
    }
    admin = AdminClient(conf)
    return admin.list_topics(timeout=timeout_s)


async def _metadata(
    settings: Mapping[str, Any], timeout_s: float
) -> tuple[ClusterMetadata | None, str]:
    """The cluster's metadata, or None and why it could not be read."""
    try:
        meta = await asyncio.to_thread(_cluster_metadata, settings, timeout_s)
    except KafkaException as exc:
        return None, exc.args[0].str() if exc.args else str(exc)
    return meta, ""


async def check_kafka(config: Config, *, timeout_s: float) -> list[Finding]:
    kafka = config.kafka
    meta, why = await _metadata(kafka.client_properties(), timeout_s)
    if meta is None:
        return [Finding.problem("kafka", f"cannot reach Kafka at {kafka.bootstrap_servers}: {why}")]
    findings = [
        Finding.ok(
            "kafka", f"Kafka at {kafka.bootstrap_servers} answers ({len(meta.brokers)} broker(s))"
        )
    ]
    produced: list[str] = []
    for table in config.source.tables:
        schema, _, name = table.partition(".")
        topic = f"{kafka.topic_prefix}.{schema}.{name}"
        produced.append(topic)
        subject = f"topic {topic}"
        held = meta.topics.get(topic)
        if held is None:
            findings.append(
                Finding.warning(
                    subject,
                    f"topic {topic} does not exist yet: capture creates it at the first change "
                    f"of {table} (kafka.topic_partitions = {kafka.topic_partitions})",
                )
            )
        else:
            findings.append(
                Finding.ok(subject, f"topic {topic} exists ({len(held.partitions)} partition(s))")
            )
    for name, integration in config.integrations.items():
        if not integration.enabled:
            continue
        for topic in integration.topics:
            if topic not in produced and topic not in meta.topics:
                findings.append(
                    Finding.warning(
                        f"integration {name}",
                        f"integration {name!r} reads topic {topic}, which does not exist and "
                        "which no table of source.tables produces: it will receive nothing",
                    )
                )
    return findings


# --------------------------------------------------------------------------- registry


async def check_registry(config: Config, *, timeout_s: float) -> list[Finding]:
    registry = config.registry
    subject = "registry"
    if registry.is_embedded:
        path = Path(str(registry.url).removeprefix("sqlite:///"))
        folder = path.parent if str(path.parent) else Path()
        if not folder.is_dir():
            return [
                Finding.problem(
                    subject,
                    f"the embedded registry's file {path} cannot be created: "
                    f"{folder} is not a directory",
                )
            ]
        return [Finding.ok(subject, f"embedded registry (runs in-process) stores in {path}")]
    url = str(registry.url)
    client = RegistryClient.from_url(
        url, auth=registry.auth(), timeout=timeout_s, retry=RetryPolicy(attempts=1)
    )
    try:
        level = await client.get_compatibility()
    except RegistryUnavailable as exc:
        return [Finding.problem(subject, f"schema registry at {url} is unreachable: {exc}")]
    except RegistryError as exc:
        return [
            Finding.problem(subject, f"schema registry at {url} refused (HTTP {exc.status}): {exc}")
        ]
    finally:
        await client.aclose()
    if level.value == "NONE":
        return [
            Finding.warning(
                subject,
                f"schema registry at {url} answers, compatibility level NONE: "
                "schema changes are not checked, consumers may break",
            )
        ]
    return [
        Finding.ok(subject, f"schema registry at {url} answers, compatibility level {level.value}")
    ]


# --------------------------------------------------------------------------- state store


async def check_state(config: Config, *, timeout_s: float) -> list[Finding]:
    if not any(i.enabled for i in config.integrations.values()):
        return []
    dsn = config.state_dsn().get_secret_value()
    shown = redact_dsn(dsn)
    schema = config.state.schema_
    try:
        conn = await pg_connect(dsn, timeout_s)
    except (psycopg.Error, TimeoutError) as exc:
        return [Finding.problem("state store", f"cannot connect to {shown}: {pg_reason(exc)}")]

    async def inspect() -> list[Finding]:
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s),"
            " has_database_privilege(current_user, current_database(), 'CREATE')",
            (schema,),
        )
        row = await cur.fetchone()
        assert row is not None
        exists, can_create = bool(row[0]), bool(row[1])
        if exists:
            return [Finding.ok("state store", f"{shown} answers; schema {schema!r} exists")]
        if can_create:
            return [
                Finding.ok(
                    "state store",
                    f"{shown} answers; schema {schema!r} will be created by the first sync",
                )
            ]
        return [
            Finding.problem(
                "state store",
                f"schema {schema!r} does not exist in {shown} and the role may not create it: "
                "GRANT CREATE ON DATABASE, or create the schema",
            )
        ]

    async with conn:
        return await bounded("state store", shown, inspect(), timeout_s=timeout_s)


# --------------------------------------------------------------------------- sinks


async def check_sinks(config: Config, *, timeout_s: float) -> list[Finding]:
    checks = []
    for name, integration in config.integrations.items():
        subject = f"sink {name}"
        if not integration.enabled:
            continue
        sink = integration.sink
        if isinstance(sink, HttpSinkConfig):
            call = _check_http(subject, sink, timeout_s=timeout_s)
        elif isinstance(sink, PostgresSinkConfig):
            call = _check_postgres(subject, sink, timeout_s=timeout_s)
        else:
            call = _check_kafka_sink(subject, sink, config, timeout_s=timeout_s)
        checks.append(bounded(subject, "the target", call, timeout_s=timeout_s + 2))
    results = await asyncio.gather(*checks)
    return [f for group in results for f in group]


async def _check_http(subject: str, sink: HttpSinkConfig, *, timeout_s: float) -> list[Finding]:
    if sink.health_url is not None:
        url = redact_dsn(str(sink.health_url))
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            try:
                response = await client.get(str(sink.health_url))
            except httpx.HTTPError as exc:
                return [
                    Finding.problem(
                        subject, f"health check {url} failed: {type(exc).__name__}: {exc}"
                    )
                ]
        if not response.is_success:
            return [
                Finding.problem(subject, f"health check {url} answered HTTP {response.status_code}")
            ]
        return [Finding.ok(subject, f"health check {url} answered HTTP {response.status_code}")]
    # No health URL: the best cheap test is whether the URL's host accepts a connection.
    parts = urlsplit(re.sub(r"\{[^}]*\}", "x", str(sink.url)))
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
        return [Finding.problem(subject, f"{host}:{port} (the sink URL's host) refuses: {reason}")]
    writer.close()
    return [
        Finding.ok(
            subject,
            f"{host}:{port} accepts connections (set health_url for a real health check)",
        )
    ]


async def _check_postgres(
    subject: str, sink: PostgresSinkConfig, *, timeout_s: float
) -> list[Finding]:
    dsn = sink.dsn.get_secret_value()
    shown = redact_dsn(dsn)
    try:
        conn = await pg_connect(dsn, timeout_s)
    except (psycopg.Error, TimeoutError) as exc:
        return [Finding.problem(subject, f"cannot connect to {shown}: {pg_reason(exc)}")]
    # The sink's reading of the name: split at the first dot, each part as it is (quoted
    # when used), so a name with quotes, spaces or capitals is looked up, not parsed as SQL.
    schema, _, table = sink.table.partition(".")
    async with conn:
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s)",
            (schema, table),
        )
        row = await cur.fetchone()
    if row is not None and row[0]:
        return [Finding.ok(subject, f"{shown} answers; table {sink.table} exists")]
    if sink.create_table:
        return [
            Finding.ok(
                subject, f"{shown} answers; table {sink.table} will be created (create_table)"
            )
        ]
    return [
        Finding.problem(
            subject,
            f"table {sink.table} does not exist in {shown} and create_table is false",
        )
    ]


async def _check_kafka_sink(
    subject: str, sink: KafkaSinkConfig, config: Config, *, timeout_s: float
) -> list[Finding]:
    bootstrap = sink.bootstrap_servers or config.kafka.bootstrap_servers
    settings: dict[str, Any] = dict(config.kafka.client_properties())
    for key, value in sink.properties.items():
        settings[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
    settings["bootstrap.servers"] = bootstrap
    meta, why = await _metadata(settings, timeout_s)
    if meta is None:
        return [Finding.problem(subject, f"cannot reach Kafka at {bootstrap}: {why}")]
    state = "exists" if sink.topic in meta.topics else "will be created (compacted)"
    return [Finding.ok(subject, f"Kafka at {bootstrap} answers; topic {sink.topic} {state}")]


# --------------------------------------------------------------------------- inbound

_ORIGIN_FUNCTIONS = (
    "pg_replication_origin_create(text)",
    "pg_replication_origin_session_setup(text)",
)


async def check_inbound(config: Config, *, timeout_s: float) -> list[Finding]:
    """Per integration taking inbound changes: its table and columns, and replication origins.

    The inbound worker writes under a replication origin (no echo), which needs a superuser
    or EXECUTE on the origin functions; the table must hold the key and version columns.
    """
    wanted = {
        name: integration.inbound
        for name, integration in config.integrations.items()
        if integration.enabled and integration.inbound is not None
    }
    if not wanted:
        return []
    dsn = config.source.dsn.get_secret_value()
    try:
        conn = await pg_connect(dsn, timeout_s)
    except (psycopg.Error, TimeoutError) as exc:
        shown = redact_dsn(dsn)
        return [
            Finding.problem(f"inbound {n}", f"cannot connect to {shown}: {pg_reason(exc)}")
            for n in wanted
        ]

    async def inspect() -> list[Finding]:
        cur = await conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        row = await cur.fetchone()
        assert row is not None
        role, superuser = str(row[0]), bool(row[1])
        missing: list[str] = []
        if not superuser:
            for function in _ORIGIN_FUNCTIONS:
                cur = await conn.execute(
                    "SELECT has_function_privilege(current_user, %s, 'EXECUTE')", (function,)
                )
                allowed = await cur.fetchone()
                if allowed is None or not allowed[0]:
                    missing.append(function)
        findings: list[Finding] = []
        for name, inbound in wanted.items():
            assert inbound is not None
            subject = f"inbound {name}"
            table = TableName.parse(str(inbound.table))
            cur = await conn.execute(
                "SELECT a.attname FROM pg_attribute a"
                " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
                " AND a.attname = ANY(%s)",
                (table.ident().as_string(conn), [inbound.key_column, inbound.version_column]),
            )
            found = {str(r[0]) for r in await cur.fetchall()}
            absent = [c for c in (inbound.key_column, inbound.version_column) if c not in found]
            if absent:
                findings.append(
                    Finding.problem(
                        subject,
                        f"table {table} lacks column(s) {', '.join(absent)} (or does not exist):"
                        " inbound changes need the key and the version column",
                    )
                )
            if missing:
                findings.append(
                    Finding.problem(
                        subject,
                        f"role {role} may not use replication origins, which inbound writes"
                        f" need (no echo): GRANT EXECUTE ON FUNCTION {', '.join(missing)}"
                        f" TO {role}, or connect as a superuser",
                    )
                )
            if not absent and not missing:
                findings.append(
                    Finding.ok(
                        subject,
                        f"table {table} has {inbound.key_column} and {inbound.version_column};"
                        f" role {role} may write under replication origin cdcsync_{name}",
                    )
                )
        return findings

    async with conn:
        return await bounded("inbound", "the source database", inspect(), timeout_s=timeout_s)
