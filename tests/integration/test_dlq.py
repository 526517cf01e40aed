"""Dead letters end to end: a mapper bug dead-letters rows; once fixed, dlq replay applies them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.integration.harness import spawn_cdcsync
from tests.integration.sync_harness import CRM_SECRET, SyncEnv

BUGGY = """
from mappers.examples import customer_to_contact as _mapped

def customer_to_contact(event, ctx):
    row = event.after or {}
    if row.get("id") in (5, 13):
        raise ValueError(f"bug: cannot map customer {row.get('id')}")
    return _mapped(event, ctx)
"""

FIXED = """
from mappers.examples import customer_to_contact
"""


@pytest.fixture
def env(sync_env: SyncEnv) -> SyncEnv:
    return sync_env


def write_config(env: SyncEnv) -> Path:
    """The sync config, with the CRM fed by the module ``user_mappers`` in the work dir."""
    (env.capture.workdir / "user_mappers.py").write_text(BUGGY)
    config = env.config()
    config["integrations"] = {"crm": config["integrations"]["crm"]}
    config["integrations"]["crm"]["mapper"] = "user_mappers:customer_to_contact"
    path = env.capture.workdir / "dlq.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def environ(env: SyncEnv) -> dict[str, str]:
    return {**os.environ, "CRM_SECRET": CRM_SECRET, "PYTHONPATH": str(env.capture.workdir)}


def cdcsync(env: SyncEnv, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command, rest = args[0], args[1:]
    sub = [command, rest[0], "--config", str(path), *rest[1:]]
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *sub],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ(env),
        check=False,
    )


def listed(env: SyncEnv, path: Path) -> list[dict[str, Any]]:
    done = cdcsync(env, path, "dlq", "list", "crm", "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def replayed(env: SyncEnv, path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = cdcsync(env, path, "dlq", "replay", "crm", "--json", *args)
    return done.returncode, json.loads(done.stdout)


def wait_for(condition: Any, *, timeout: float = 60, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_fixing_the_mapper_and_replaying_dead_letters_applies_exactly_those_once(
    env: SyncEnv,
) -> None:
    path = write_config(env)
    env.capture.start()
    env.capture.wait_for_slot()
    sync = spawn_cdcsync("sync", path, env.capture.workdir / "sync.log", env=environ(env))
    env.sync_procs.append(sync)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for cid in range(1, 21):
            conn.execute(
                "INSERT INTO customers (id, name, email) VALUES (%s, %s, %s)",
                (cid, f"Customer {cid}", f"c{cid}@example.com"),
            )
    source = env.source_customers()
    wait_for(lambda: len(env.crm_contacts()) == 18 and len(listed(env, path)) == 2, what="sync")
    assert set(source) - set(env.crm_contacts()) == {"5", "13"}
    rows = listed(env, path)
    assert [r["key"] for r in rows] == ["5", "13"]
    assert all("bug: cannot map" in r["error"] and r["replayed_at"] is None for r in rows)

    # Still broken: both fail again, stay pending, with the new error.
    code, result = replayed(env, path)
    assert code == 1
    assert result["replayed"] == [] and len(result["failed"]) == 2
    assert [r["replay_attempts"] for r in listed(env, path)] == [1, 1]

    # Fix forward: the next replay applies exactly those two, the one asked for first.
    (env.capture.workdir / "user_mappers.py").write_text(FIXED)
    first, second = (r["id"] for r in rows)
    # The second one's payload is gone from the state store: it is read back from the
    # dead-letter topic.
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE cdcsync_state.dead_letters SET payload = NULL WHERE id = %s", (second,)
        )
    code, result = replayed(env, path, "--id", str(first))
    assert code == 0
    assert result["replayed"] == [first] and result["applied"] == 1
    code, result = replayed(env, path)
    assert code == 0
    assert result["replayed"] == [second] and result["applied"] == 1
    assert env.crm_contacts() == source

    # Once: nothing is left to replay, and asking again by id applies nothing.
    applied = env.crm.store.stats().applied
    code, result = replayed(env, path, "--id", str(first))
    assert code == 0
    assert result["replayed"] == [] and result["not_pending"] == [first]
    code, result = replayed(env, path)
    assert result["replayed"] == [] and result["applied"] == 0
    assert env.crm.store.stats().applied == applied
    assert all(r["replayed_at"] is not None for r in listed(env, path))


def test_dead_letters_of_an_unknown_integration_are_refused_clearly(env: SyncEnv) -> None:
    path = write_config(env)
    done = cdcsync(env, path, "dlq", "list", "nope")
    assert done.returncode == 2
    assert "unknown integration 'nope'" in done.stderr
