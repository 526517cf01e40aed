"""cdcsync status: consumer lag, dead letters and slot figures from the real servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cdc.demo.throwaway import free_port
from tests.integration.harness import spawn_cdcsync
from tests.integration.sync_harness import CRM_SECRET, SyncEnv

BUGGY = """
from mappers.examples import customer_to_contact as _mapped

def customer_to_contact(event, ctx):
    if (event.after or {}).get("id") == 5:
        raise ValueError("bug: customer 5")
    return _mapped(event, ctx)
"""


@pytest.fixture
def env(sync_env: SyncEnv) -> SyncEnv:
    return sync_env


def write_config(env: SyncEnv, *, admin_port: int, token: str | None = None) -> Path:
    (env.capture.workdir / "status_mappers.py").write_text(BUGGY)
    config = env.config()
    config["integrations"] = {"crm": config["integrations"]["crm"]}
    config["integrations"]["crm"]["mapper"] = "status_mappers:customer_to_contact"
    config["admin"] = {"listen": f"127.0.0.1:{admin_port}"}
    if token is not None:
        config["admin"]["token"] = token
    path = env.capture.workdir / "status.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def environ(env: SyncEnv) -> dict[str, str]:
    return {**os.environ, "CRM_SECRET": CRM_SECRET, "PYTHONPATH": str(env.capture.workdir)}


def status(env: SyncEnv, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "cdc.cli", "status", "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ(env),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def status_json(env: SyncEnv, path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(status(env, path, "--json").stdout)
    return result


def wait_status(
    env: SyncEnv, path: Path, condition: Callable[[dict[str, Any]], bool], *, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = status_json(env, path)
        if condition(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"status never showed {what}: {json.dumps(last, indent=1)}")


def insert_customers(env: SyncEnv, ids: range) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for cid in ids:
            conn.execute(
                "INSERT INTO customers (id, name, email) VALUES (%s, %s, %s)",
                (cid, f"Customer {cid}", f"c{cid}@example.com"),
            )


def test_status_shows_lag_dead_letters_and_the_slot_and_says_no_process_answers(
    env: SyncEnv,
) -> None:
    path = write_config(env, admin_port=free_port())
    env.capture.start()
    env.capture.wait_for_slot()
    sync = spawn_cdcsync("sync", path, env.capture.workdir / "sync.log", env=environ(env))
    env.sync_procs.append(sync)
    insert_customers(env, range(1, 11))

    def crm(s: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = s["integrations"]["crm"]
        return entry

    caught_up = wait_status(
        env,
        path,
        lambda s: (
            crm(s)["lag"] == 0
            and crm(s)["dead_letters"]["pending"] == 1
            and len(env.crm_contacts()) == 9
        ),
        what="the CRM caught up with one dead letter",
    )
    assert caught_up["capture"]["active"] is True
    assert caught_up["capture"]["confirmed_flush_lsn"] is not None

    # The sync stops; five more customers wait in Kafka for it.
    sync.send_signal(signal.SIGTERM)
    sync.wait(30)
    insert_customers(env, range(11, 16))
    lagging = wait_status(env, path, lambda s: crm(s)["lag"] == 5, what="a lag of 5")
    (partition,) = crm(lagging)["partitions"]
    assert partition["end"] - partition["committed"] == 5
    assert lagging["live"] is None
    assert "no cdcsync process answers" in lagging["live_error"]

    # Capture stops; the slot falls behind the WAL and holds it.
    env.capture.stop_all()
    insert_customers(env, range(16, 20))
    behind = wait_status(
        env,
        path,
        lambda s: s["capture"]["active"] is False and s["capture"]["lag_bytes"] > 0,
        what="an inactive, lagging slot",
    )
    assert behind["capture"]["retained_wal_bytes"] >= behind["capture"]["lag_bytes"]

    human = status(env, path).stdout
    assert "no cdcsync process answers" in human
    assert "1 pending" in human
    assert behind["capture"]["confirmed_flush_lsn"] in human
