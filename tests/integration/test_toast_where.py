"""An update that makes a row match a declarative ``where`` for the first time, leaving an
unchanged TOAST value out: the target row it creates still gets that value.

``cdcsync run`` against real PostgreSQL, the broker and the registry; the integration maps
``public.docs`` rows whose ``status`` is ``'active'`` into a PostgreSQL table. ``body`` is
stored out of line (``STORAGE EXTERNAL``) and the update only changes ``status``, so its
event carries Debezium's placeholder for ``body``; the target never held the row.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.integration.harness import slot_streaming, spawn_cdcsync, terminate

TARGET = "public.active_docs"


@pytest.fixture
def config(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> tuple[Path, str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, status text NOT NULL, body text)")
        conn.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    slot = f"s_{uuid.uuid4().hex[:10]}"
    data: dict[str, Any] = {
        "source": {
            "dsn": pg_dsn,
            "slot": slot,
            "publication": f"p_{slot}",
            "tables": ["public.docs"],
            "snapshot": "never",
        },
        "kafka": {"bootstrap_servers": kafka_bootstrap, "topic_prefix": topic_prefix},
        "registry": {"url": registry_url},
        "admin": {"listen": "127.0.0.1:0"},
        "integrations": {
            "active": {
                "topics": [f"{topic_prefix}.public.docs"],
                "mapper": {
                    "entity": "doc",
                    "key": "id",
                    "fields": {"id": "id", "status": "status", "body": "body"},
                    "where": "status == 'active'",
                },
                "sink": {"type": "postgres", "dsn": pg_dsn, "table": TARGET, "create_table": True},
            }
        },
    }
    path = tmp_path / "cdcsync.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, slot


def _target(dsn: str) -> dict[int, tuple[str, str | None]]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass(%s)", (TARGET,)).fetchone() == (None,):
            return {}
        rows = conn.execute(f"SELECT id, status, body FROM {TARGET}").fetchall()
    return {int(i): (s, b) for i, s, b in rows}


def test_a_row_that_starts_matching_where_gets_its_unchanged_toast_value_in_the_target(
    config: tuple[Path, str], pg_dsn: str, tmp_path: Path
) -> None:
    path, slot = config
    proc = spawn_cdcsync("run", path, tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 60
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while not slot_streaming(conn, slot):
                assert proc.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "run.log"
                ).read_text()
                time.sleep(0.1)
            conn.execute(
                "INSERT INTO docs SELECT i, 'draft', (SELECT string_agg(md5(i || ':' || j), '')"
                " FROM generate_series(1, 100) j) FROM generate_series(1, 4) i"
            )
            conn.execute("UPDATE docs SET status = 'active' WHERE id IN (1, 2)")
            # A row that matches from its insert on: the later toasted update keeps it.
            conn.execute("INSERT INTO docs VALUES (9, 'active', repeat('x', 5000))")
            conn.execute("UPDATE docs SET status = 'active' WHERE id = 9")
            expected = {
                int(i): (s, b)
                for i, s, b in conn.execute(
                    "SELECT id, status, body FROM docs WHERE status = 'active'"
                ).fetchall()
            }
        deadline = time.monotonic() + 60
        while _target(pg_dsn) != expected:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            if time.monotonic() > deadline:
                got = {
                    k: (s, None if b is None else b[:12]) for k, (s, b) in _target(pg_dsn).items()
                }
                raise AssertionError(f"target {got}\n{(tmp_path / 'run.log').read_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        terminate([proc])
    assert "asked capture to read those rows again" in (tmp_path / "run.log").read_text()
