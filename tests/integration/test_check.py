"""``cdcsync check``: each misconfiguration is reported with a sentence that names it.

Every case runs against real servers (PostgreSQL clusters, the tansu broker, the registry,
the CRM HTTP server); a broken server is a closed port, a failing health check is the
CRM's injected fault, a lagging slot is real retained WAL.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql
from pydantic import BaseModel

from cdc.capture.replication import ReplicationStream
from cdc.config import PostgresSinkConfig, parse_config
from cdc.demo.crm import CrmServer
from cdc.demo.throwaway import LocalPostgres, free_port
from cdc.ops.check.report import CheckReport, Status
from cdc.ops.check.runner import run_checks
from cdc.sync.sinks.postgres import PostgresSink
from mappers.entity import EntityUpsert, Version
from mappers.examples_inbound import crm_inbound_config

TIMEOUT_S = 3.0


@dataclass
class Setup:
    """A source database with ``public.items`` and the servers a config points at."""

    dsn: str
    bootstrap: str
    registry_url: str
    prefix: str
    workdir: Path
    slot: str
    publication: str

    @property
    def topic(self) -> str:
        return f"{self.prefix}.public.items"

    def config(self, **sections: Any) -> dict[str, Any]:
        source = {
            "dsn": self.dsn,
            "slot": self.slot,
            "publication": self.publication,
            "tables": ["public.items"],
            **sections.pop("source", {}),
        }
        return {
            "source": source,
            "kafka": {"bootstrap_servers": self.bootstrap, "topic_prefix": self.prefix},
            "registry": {"url": self.registry_url},
            **sections,
        }

    def check(self, **sections: Any) -> CheckReport:
        config = parse_config(self.config(**sections), env={})
        return asyncio.run(run_checks(config, timeout_s=TIMEOUT_S))

    def sql(self, *statements: str | sql.Composed) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for statement in statements:
                conn.execute(
                    statement if isinstance(statement, sql.Composed) else statement.encode()
                )

    def create_slot(self, plugin: str = "pgoutput") -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (self.slot, plugin))

    def create_publication(self, *tables: str) -> None:
        self.sql(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(self.publication),
                sql.SQL(", ").join(sql.Identifier(t) for t in tables),
            )
        )

    def create_publication_and_slot(self) -> None:
        self.create_publication("items")
        self.create_slot()

    def create_topic(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(self.topic, num_partitions=1)])[self.topic].result(30)


@pytest.fixture
def setup(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Setup:
    env = Setup(
        pg_dsn,
        kafka_bootstrap,
        registry_url,
        topic_prefix,
        tmp_path,
        slot=f"s_{uuid.uuid4().hex[:8]}",
        publication=f"p_{uuid.uuid4().hex[:8]}",
    )
    env.sql("CREATE TABLE items (id int PRIMARY KEY, name text)")
    return env


@pytest.fixture
def crm() -> Iterator[CrmServer]:
    with CrmServer() as server:
        yield server


def closed_port_url(scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


def findings(report: CheckReport, status: Status) -> list[str]:
    return [f"{f.subject}: {f.message}" for f in report.findings if f.status is status]


def only(report: CheckReport, status: Status, *words: str) -> str:
    """The single finding of ``status`` holding every word; fails with the report otherwise."""
    hits = [line for line in findings(report, status) if all(w in line for w in words)]
    assert len(hits) == 1, report.render_text()
    return hits[0]


def cdcsync_check(
    config: dict[str, Any], workdir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    path = workdir / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", "check", "--config", str(path), "--timeout", "3", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "CRM_SECRET": "not-used"},
    )


def integrations(setup: Setup, crm: CrmServer) -> dict[str, Any]:
    return {
        "crm": {
            "topics": [setup.topic],
            "mapper": "mappers.examples:customer_to_contact",
            "sink": {
                "type": "http",
                "url": crm.url + "/contacts/{key}",
                "health_url": crm.url + "/health",
            },
        },
        "analytics": {
            "topics": [setup.topic],
            "mapper": "mappers.examples:order_to_fact",
            "sink": {
                "type": "postgres",
                "dsn": setup.dsn,
                "table": "analytics.orders",
                "create_table": True,
            },
        },
        "entities": {
            "topics": [setup.topic],
            "mapper": "mappers.examples:customer_to_contact",
            "sink": {"type": "kafka", "topic": f"{setup.prefix}.entities"},
        },
    }


# --------------------------------------------------------------------------- all good


def test_a_ready_setup_reports_every_check_ok_and_exits_0(setup: Setup, crm: CrmServer) -> None:
    setup.create_publication_and_slot()
    setup.create_topic()
    config = setup.config(integrations=integrations(setup, crm))
    result = cdcsync_check(config, setup.workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    checks, summary = lines[:-1], lines[-1]
    assert all(line.startswith("ok ") for line in checks), result.stdout
    subjects = {line.split()[1].rstrip(":") for line in checks}
    assert {"source", "wal_level", "publication", "slot", "kafka", "registry"} <= subjects
    assert "sink crm: health check" in result.stdout
    assert "sink analytics:" in result.stdout and "sink entities:" in result.stdout
    assert "0 problems, 0 warnings: ready to run" in summary


def test_json_output_lists_every_check_with_its_status(setup: Setup) -> None:
    result = cdcsync_check(setup.config(), setup.workdir, "--json")
    answer = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout
    assert answer["ok"] is True and answer["exit_code"] == 0
    by_subject = {c["subject"]: c for c in answer["checks"]}
    assert by_subject["wal_level"]["status"] == "ok"
    assert by_subject["slot"]["status"] == "warning"  # capture will create it
    assert answer["warnings"] >= 3  # slot, publication, topic


# --------------------------------------------------------------------------- config


def test_an_invalid_config_exits_2_naming_the_key(setup: Setup) -> None:
    config = setup.config(source={"slot": "Not A Slot!"})
    result = cdcsync_check(config, setup.workdir)
    assert result.returncode == 2
    assert "source.slot" in result.stderr
    as_json = cdcsync_check(config, setup.workdir, "--json")
    assert as_json.returncode == 2
    assert any("source.slot" in p for p in json.loads(as_json.stdout)["config_errors"])


# --------------------------------------------------------------------------- source


@pytest.fixture(scope="module")
def replica_server() -> Iterator[LocalPostgres]:
    """wal_level=replica, one slot, already taken by a physical slot named ``taken``."""
    server = LocalPostgres(settings={"wal_level": "replica", "max_replication_slots": "1"})
    server.start()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
            conn.execute("SELECT pg_create_physical_replication_slot('taken')")
        yield server
    finally:
        server.stop()


def on_server(setup: Setup, server: LocalPostgres, **source: Any) -> CheckReport:
    return setup.check(source={"dsn": server.dsn, **source})


def test_wal_level_replica_is_a_problem_that_says_how_to_fix_it(
    setup: Setup, replica_server: LocalPostgres
) -> None:
    report = on_server(setup, replica_server)
    line = only(report, Status.PROBLEM, "wal_level is 'replica'")
    assert "wal_level = logical" in line
    assert report.exit_code == 1


def test_a_physical_slot_of_the_configured_name_is_a_problem(
    setup: Setup, replica_server: LocalPostgres
) -> None:
    report = on_server(setup, replica_server, slot="taken")
    assert "needs a logical pgoutput slot" in only(report, Status.PROBLEM, "'taken'")


def test_no_free_replication_slot_is_a_problem(setup: Setup, replica_server: LocalPostgres) -> None:
    report = on_server(setup, replica_server, slot="wanted")
    line = only(report, Status.PROBLEM, "no free replication slot")
    assert "max_replication_slots = 1" in line


def test_a_role_without_replication_privilege_is_a_problem(setup: Setup) -> None:
    role = f"r_{uuid.uuid4().hex[:8]}"
    setup.sql(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        dsn = psycopg.conninfo.make_conninfo(setup.dsn, user=role)
        report = setup.check(source={"dsn": dsn})
        line = only(report, Status.PROBLEM, "lacks the REPLICATION privilege")
        assert f"ALTER ROLE {role} WITH REPLICATION" in line
    finally:
        setup.sql(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_missing_table_is_a_problem_naming_it(setup: Setup) -> None:
    report = setup.check(source={"tables": ["public.items", "public.nope"]})
    assert "does not exist" in only(report, Status.PROBLEM, "public.nope")
    assert report.exit_code == 1


@pytest.mark.parametrize(
    ("ddl", "words"),
    [
        ("CREATE TABLE loose (a int)", "no primary key and REPLICA IDENTITY DEFAULT"),
        (
            "CREATE TABLE loose (a int PRIMARY KEY); ALTER TABLE loose REPLICA IDENTITY NOTHING",
            "REPLICA IDENTITY NOTHING",
        ),
        (
            "CREATE TABLE loose (a int); ALTER TABLE loose REPLICA IDENTITY FULL",
            "no primary key: REPLICA IDENTITY FULL",
        ),
    ],
    ids=["no-key-default", "nothing", "no-key-full"],
)
def test_a_replica_identity_that_loses_data_is_a_warning_naming_the_table(
    setup: Setup, ddl: str, words: str
) -> None:
    setup.sql(*ddl.split("; "))
    report = setup.check(source={"tables": ["public.items", "public.loose"]})
    only(report, Status.WARNING, "public.loose", words)
    assert not findings(report, Status.PROBLEM), report.render_text()
    assert report.exit_code == 0


def test_a_table_with_replica_identity_full_and_a_key_is_ok(setup: Setup) -> None:
    setup.sql("ALTER TABLE items REPLICA IDENTITY FULL")
    report = setup.check()
    only(report, Status.OK, "public.items", "REPLICA IDENTITY FULL")


def test_a_missing_publication_is_a_problem_when_capture_may_not_create_it(
    setup: Setup,
) -> None:
    report = setup.check(source={"create_publication": False})
    line = only(report, Status.PROBLEM, f"publication {setup.publication!r} does not exist")
    assert "CREATE PUBLICATION" in line
    created = setup.check()
    only(created, Status.WARNING, "capture will create it for public.items")


def test_a_publication_lacking_a_table_is_named_and_extra_tables_are_warned(
    setup: Setup,
) -> None:
    setup.sql(
        "CREATE TABLE other (id int PRIMARY KEY)",
        "CREATE TABLE more (id int PRIMARY KEY)",
    )
    setup.create_publication("other")
    report = setup.check(
        source={"tables": ["public.items", "public.more"], "create_publication": False}
    )
    line = only(report, Status.PROBLEM, "lacks public.items, public.more")
    assert f"ALTER PUBLICATION {setup.publication} ADD TABLE" in line
    only(report, Status.WARNING, "also holds public.other")


def test_a_slot_of_another_plugin_is_a_problem(setup: Setup) -> None:
    setup.create_slot("test_decoding")
    report = setup.check()
    assert "plugin 'test_decoding'" in only(report, Status.PROBLEM, setup.slot)


def test_a_missing_slot_is_a_problem_only_when_capture_may_not_create_it(
    setup: Setup,
) -> None:
    report = setup.check(source={"create_slot": False})
    only(report, Status.PROBLEM, "does not exist and source.create_slot is false")
    only(setup.check(), Status.WARNING, "capture will create it", setup.slot)


def test_retained_wal_above_the_limits_is_reported_with_the_amount(setup: Setup) -> None:
    setup.create_publication_and_slot()
    setup.sql("INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
    stop = setup.check(source={"slot_lag_stop_bytes": 4096})
    line = only(stop, Status.PROBLEM, "slot_lag_stop_bytes")
    assert "iB of WAL" in line and "confirmed up to" in line
    warn = setup.check(source={"slot_lag_warn_bytes": 4096})
    only(warn, Status.WARNING, "above source.slot_lag_warn_bytes")
    assert warn.exit_code == 0


def test_a_slot_in_use_is_a_warning_naming_the_process(setup: Setup) -> None:
    setup.create_publication_and_slot()

    async def check_while_streaming() -> CheckReport:
        stream = await ReplicationStream.start(
            setup.dsn, slot=setup.slot, publication=setup.publication
        )
        try:
            config = parse_config(setup.config(), env={})
            return await run_checks(config, timeout_s=TIMEOUT_S)
        finally:
            await stream.close()

    report = asyncio.run(check_while_streaming())
    only(report, Status.WARNING, "is in use by pid")
    only(report, Status.OK, "wal senders")


def test_an_unreachable_source_is_a_problem(setup: Setup) -> None:
    dsn = f"postgresql://cdc:pw@127.0.0.1:{free_port()}/app"
    report = setup.check(source={"dsn": dsn})
    only(report, Status.PROBLEM, "source: cannot connect to")


# --------------------------------------------------------------------------- kafka, registry


def test_a_missing_topic_is_a_warning_and_an_unreachable_broker_a_problem(setup: Setup) -> None:
    report = setup.check()
    only(report, Status.WARNING, f"topic {setup.topic} does not exist yet")
    down = setup.check(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "topic_prefix": "x"})
    only(down, Status.PROBLEM, "cannot reach Kafka")


def test_an_integration_reading_a_topic_nothing_produces_is_warned(
    setup: Setup, crm: CrmServer
) -> None:
    wired = integrations(setup, crm)
    wired["crm"]["topics"] = [f"{setup.prefix}.public.typo"]
    report = setup.check(integrations={"crm": wired["crm"]})
    only(report, Status.WARNING, "integration 'crm' reads topic", "public.typo")


def test_the_registry_is_checked_for_reachability_and_compatibility_level(
    setup: Setup, fresh_registry_url: str
) -> None:
    report = setup.check()
    only(report, Status.OK, "compatibility level BACKWARD")
    httpx.put(fresh_registry_url + "/config", json={"compatibility": "NONE"}).raise_for_status()
    none = setup.check(registry={"url": fresh_registry_url})
    only(none, Status.WARNING, "compatibility level NONE")
    down = setup.check(registry={"url": closed_port_url()})
    only(down, Status.PROBLEM, "registry", "unreachable")


# --------------------------------------------------------------------------- state, sinks


def test_an_unreachable_state_store_is_a_problem(setup: Setup, crm: CrmServer) -> None:
    report = setup.check(
        integrations={"crm": integrations(setup, crm)["crm"]},
        state={"dsn": f"postgresql://cdc@127.0.0.1:{free_port()}/state"},
    )
    only(report, Status.PROBLEM, "state store: cannot connect")


def test_a_failing_http_health_check_is_a_problem(setup: Setup, crm: CrmServer) -> None:
    crm.store.set_faults(status=503, count=1)
    report = setup.check(integrations={"crm": integrations(setup, crm)["crm"]})
    only(report, Status.PROBLEM, "sink crm", "answered HTTP 503")


def test_an_http_sink_without_health_url_is_checked_by_its_host(
    setup: Setup, crm: CrmServer
) -> None:
    crm_integration = integrations(setup, crm)["crm"]
    del crm_integration["sink"]["health_url"]
    only(setup.check(integrations={"crm": crm_integration}), Status.OK, "accepts connections")
    crm_integration["sink"]["url"] = closed_port_url() + "/contacts/{key}"
    report = setup.check(integrations={"crm": crm_integration})
    only(report, Status.PROBLEM, "sink crm", "refuses")


def test_a_postgres_sink_unreachable_or_without_its_table_is_a_problem(
    setup: Setup, crm: CrmServer
) -> None:
    analytics = integrations(setup, crm)["analytics"]
    analytics["sink"]["create_table"] = False
    report = setup.check(integrations={"analytics": analytics})
    only(report, Status.PROBLEM, "table analytics.orders does not exist")
    analytics["sink"]["dsn"] = f"postgresql://cdc@127.0.0.1:{free_port()}/target"
    down = setup.check(integrations={"analytics": analytics})
    only(down, Status.PROBLEM, "sink analytics: cannot connect")


@pytest.mark.parametrize("table", ['analytics."We ird ""T""able"', 'analytics.We ird "T"able'])
def test_a_postgres_sink_table_with_an_awkward_name_the_sink_wrote_is_ok(
    setup: Setup, crm: CrmServer, table: str
) -> None:
    """The sink takes the name after the first dot as it is (quoting it when used); check
    looks for the same table, whatever quotes, spaces or case it holds."""

    class Fact(BaseModel):
        total: int

    config = PostgresSinkConfig(type="postgres", dsn=setup.dsn, table=table, create_table=True)
    sink = PostgresSink("analytics", config, integration="analytics")

    async def write() -> None:
        try:
            await sink.start()
            await sink.apply([EntityUpsert("fact", "a", Version.from_lsn(100, 0), Fact(total=1))])
        finally:
            await sink.close()

    asyncio.run(write())
    analytics = integrations(setup, crm)["analytics"]
    analytics["sink"].update(table=table, create_table=False)
    report = setup.check(integrations={"analytics": analytics})
    assert findings(report, Status.PROBLEM) == [], report.render_text()
    only(report, Status.OK, "sink analytics", f"table {table} exists")


def test_a_kafka_sink_whose_broker_is_unreachable_is_a_problem(
    setup: Setup, crm: CrmServer
) -> None:
    entities = integrations(setup, crm)["entities"]
    entities["sink"]["bootstrap_servers"] = f"127.0.0.1:{free_port()}"
    report = setup.check(integrations={"entities": entities})
    only(report, Status.PROBLEM, "sink entities: cannot reach Kafka")


# --------------------------------------------------------------------------- secrets


def test_secrets_are_never_printed(setup: Setup, crm: CrmServer) -> None:
    secrets = {
        "source": "src-Pa55word",
        "state": "state-Pa55word",
        "sink_dsn": "sink-Pa55word",
        "hmac": "hmac-s3cret-value",
        "token": "admin-t0ken-value",
        "header": "Bearer header-t0ken",
        "query": "query-t0ken-value",
    }
    wired = integrations(setup, crm)
    wired["crm"]["sink"]["secret"] = secrets["hmac"]
    wired["crm"]["sink"]["headers"] = {"Authorization": secrets["header"]}
    wired["crm"]["sink"]["health_url"] = f"{closed_port_url()}/health?token={secrets['query']}"
    port = free_port()
    wired["analytics"]["sink"]["dsn"] = (
        f"postgresql://cdc:{secrets['sink_dsn']}@127.0.0.1:{port}/target"
    )
    source_dsn = psycopg.conninfo.make_conninfo(setup.dsn, password=secrets["source"])
    config = setup.config(
        source={"dsn": source_dsn},
        integrations=wired,
        state={"dsn": f"postgresql://cdc:{secrets['state']}@127.0.0.1:{port}/state"},
        admin={"token": secrets["token"]},
    )
    for args in ((), ("--json",)):
        result = cdcsync_check(config, setup.workdir, *args)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output  # the sinks and state store are down
        assert "cannot connect" in output  # the sink's and state store's DSNs, redacted
        assert "connected to" in output and "127.0.0.1" in output  # the source, redacted
        for name, value in secrets.items():
            assert value not in output, f"{name} secret printed"
        assert "***" in output


# --------------------------------------------------------------------------- inbound


def test_inbound_needs_its_table_columns_and_a_role_that_may_use_replication_origins(
    setup: Setup, crm: CrmServer
) -> None:
    crm_integration = integrations(setup, crm)["crm"]
    inbound = crm_inbound_config(secret_env="UNUSED")
    del inbound["secret_env"]
    crm_integration["inbound"] = {**inbound, "secret": "s3cret", "table": "public.items"}
    report = setup.check(integrations={"crm": crm_integration})
    only(report, Status.PROBLEM, "inbound crm", "lacks column(s) updated_at")
    setup.sql("ALTER TABLE items ADD COLUMN updated_at timestamptz")
    report = setup.check(integrations={"crm": crm_integration})
    only(report, Status.OK, "inbound crm", "replication origin cdcsync_crm")
    role = f"r_{uuid.uuid4().hex[:8]}"
    setup.sql(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        dsn = psycopg.conninfo.make_conninfo(setup.dsn, user=role)
        report = setup.check(source={"dsn": dsn}, integrations={"crm": crm_integration})
        line = only(report, Status.PROBLEM, "inbound crm", "may not use replication origins")
        assert f"pg_replication_origin_session_setup(text) TO {role}" in line
    finally:
        setup.sql(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
