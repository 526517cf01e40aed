"""``cdcsync reconcile`` with bad input, and on a schedule inside ``cdcsync sync``: against a
real PostgreSQL (source, state store and target), without capture running."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cdc.config import parse_config
from cdc.core.errors import MappingError
from cdc.state.store import StateStore
from mappers.entity import EntityOp, MapContext, TableEvent
from mappers.examples import SAMPLE_SCHEMA_SQL
from tests.integration.harness import read_log, spawn_cdcsync, terminate

ROWS = 20
BROKEN_ROW = 13


def picky_order(event: TableEvent, ctx: MapContext) -> list[EntityOp]:
    """Orders as facts without a CRM link; fails on order ``BROKEN_ROW``."""
    del ctx
    row = event.after or {}
    if row.get("id") == BROKEN_ROW:
        raise MappingError(f"order {BROKEN_ROW} cannot be mapped")
    return [event.upsert("order", row["id"], _Fact(order_id=row["id"], status=row["status"]))]


class _Fact(__import__("pydantic").BaseModel):
    order_id: int
    status: str


@pytest.fixture
def source(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SAMPLE_SCHEMA_SQL)
        conn.execute("INSERT INTO customers (id, name) VALUES (1, 'One')")
        conn.execute(
            "INSERT INTO orders (id, customer_id, amount, status)"
            " SELECT i, 1, i, 'new' FROM generate_series(1, %s) AS i",
            (ROWS,),
        )
        conn.execute("CREATE TABLE public.notes (body text)")
    return pg_dsn


def config_data(
    dsn: str, bootstrap: str, registry: str, prefix: str, *, target_dsn: str | None = None
) -> dict[str, Any]:
    return {
        "source": {
            "dsn": dsn,
            "slot": "s_unused",
            "publication": "p_unused",
            "tables": ["public.orders", "public.notes"],
        },
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix},
        "registry": {"url": registry},
        "state": {"schema": "cdcsync_state"},
        "admin": {"listen": "127.0.0.1:0"},
        "integrations": {
            "facts": {
                "topics": [f"{prefix}.public.orders"],
                "mapper": "tests.integration.test_reconcile_inputs:picky_order",
                "sink": {
                    "type": "postgres",
                    "dsn": target_dsn or dsn,
                    "table": "facts.orders",
                    "create_table": True,
                },
                "reconcile": {"settle_s": 0},
            },
            "notes": {
                "topics": [f"{prefix}.public.notes"],
                "mapper": "tests.integration.test_reconcile_inputs:picky_order",
                "sink": {"type": "postgres", "dsn": dsn, "table": "facts.notes"},
            },
        },
    }


def run_cli(tmp_path: Path, data: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "reconcile.yaml"
    path.write_text(yaml.safe_dump(data))
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", "reconcile", "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unknown_integration_is_refused_naming_the_configured_ones(
    source: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    data = config_data(source, kafka_bootstrap, registry_url, topic_prefix)
    result = run_cli(tmp_path, data, "nope")
    assert result.returncode == 2
    assert "unknown integration 'nope' (configured: facts, notes)" in result.stderr


def test_a_table_without_a_primary_key_is_refused_with_a_clear_message(
    source: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    data = config_data(source, kafka_bootstrap, registry_url, topic_prefix)
    result = run_cli(tmp_path, data, "notes")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot reconcile public.notes: it has no primary key" in result.stderr

    async def history() -> Any:
        state = await StateStore.open(source, schema="cdcsync_state")
        async with state:
            return await state.reconcile_runs("notes")

    (run,) = asyncio.run(history())
    assert run.result == "failed"
    assert run.error is not None and "no primary key" in run.error


def test_a_row_the_mapper_fails_on_is_counted_and_the_others_are_compared(
    source: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    data = config_data(source, kafka_bootstrap, registry_url, topic_prefix)
    result = run_cli(tmp_path, data, "facts", "--json")
    assert result.returncode == 3, result.stderr
    report = __import__("json").loads(result.stdout)
    assert report["rows_checked"] == ROWS
    assert report["mapper_failures"] == 1
    (failure,) = report["mapper_failure_rows"]
    assert failure["source_key"] == [str(BROKEN_ROW)]
    assert f"order {BROKEN_ROW} cannot be mapped" in failure["error"]
    # The target table does not exist yet: every mappable row is missing.
    assert report["missing"] == ROWS - 1
    assert {d["key"] for d in report["drift"]} == {str(i) for i in range(1, ROWS + 1)} - {
        str(BROKEN_ROW)
    }


def test_a_target_that_is_down_ends_the_run_failed_with_the_reason_in_the_history(
    source: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"postgresql://cdc:hunter2@127.0.0.1:{port}/analytics"
    data = config_data(source, kafka_bootstrap, registry_url, topic_prefix, target_dsn=down)
    result = run_cli(tmp_path, data, "facts")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the run failed: target database" in result.stdout
    assert "unreachable" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr

    async def history() -> Any:
        state = await StateStore.open(source, schema="cdcsync_state")
        async with state:
            return await state.reconcile_runs("facts")

    (run,) = asyncio.run(history())
    assert (run.result, run.scheduled) == ("failed", False)
    assert run.error is not None and "unreachable" in run.error


def test_a_scheduled_run_inside_sync_lands_in_the_history_and_the_metrics(
    source: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    data = config_data(source, kafka_bootstrap, registry_url, topic_prefix)
    data["integrations"]["facts"]["reconcile"] = {"every": "1s", "settle_s": 0}
    del data["integrations"]["notes"]
    path = tmp_path / "sync.yaml"
    path.write_text(yaml.safe_dump(data))
    log = tmp_path / "sync.log"
    proc = spawn_cdcsync("sync", path, log)
    try:
        deadline = time.monotonic() + 30
        metrics = ""
        while time.monotonic() < deadline:
            assert proc.poll() is None, read_log(log)
            urls = re.findall(r"admin API on (http://\S+)", read_log(log))
            if urls:
                with urllib.request.urlopen(urls[-1] + "/metrics", timeout=5) as answer:
                    metrics = answer.read().decode()
                if 'cdcsync_reconcile_drift_rows{integration="facts"}' in metrics:
                    break
            time.sleep(0.3)
        assert f'cdcsync_reconcile_drift_rows{{integration="facts"}} {ROWS - 1}.0' in metrics, (
            read_log(log)[-3000:]
        )
        assert 'cdcsync_reconcile_last_result{integration="facts",result="drift"} 1.0' in metrics
    finally:
        terminate([proc])

    async def history() -> Any:
        state = await StateStore.open(source, schema="cdcsync_state")
        async with state:
            return await state.reconcile_runs("facts")

    runs = asyncio.run(history())
    assert runs and all(r.scheduled and r.result == "drift" for r in runs)
    assert runs[0].missing == ROWS - 1 and runs[0].rows_checked == ROWS
    assert parse_config(data).integrations["facts"].reconcile.every_s == 1.0
