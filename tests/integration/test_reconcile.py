"""``cdcsync reconcile`` against real servers: drift made by hand in each kind of target is
reported exactly, and ``--repair`` brings the target back through the pipeline while the
source keeps changing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
import yaml

from mappers.entity import Version
from tests.integration.sync_harness import CRM_SECRET, SyncEnv, run_workload


@pytest.fixture
def env(sync_env: SyncEnv) -> SyncEnv:
    # One state store for capture and sync, as with one config file: the repair's snapshot
    # request is recorded where capture looks for it.
    capture_config = sync_env.capture.config

    def shared_state(**overrides: Any) -> dict[str, Any]:
        return {**capture_config(**overrides), "state": {"schema": "cdcsync_state"}}

    sync_env.capture.config = shared_state  # type: ignore[method-assign]
    sync_env.capture.start()
    sync_env.capture.wait_for_slot()
    sync_env.start_sync()
    return sync_env


def reconcile(
    env: SyncEnv, name: str, *args: str, config: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    path = env.capture.workdir / "reconcile.yaml"
    path.write_text(yaml.safe_dump(config if config is not None else reconcile_config(env)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdc.cli",
            "reconcile",
            "--config",
            str(path),
            name,
            "--json",
            *args,
        ],
        capture_output=True,
        timeout=60,
        env={**__import__("os").environ, "CRM_SECRET": CRM_SECRET},
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            f"no JSON report (exit {proc.returncode}):\n{proc.stdout.decode()}\n"
            f"{proc.stderr.decode()}"
        ) from None
    return proc.returncode, report


def reconcile_config(env: SyncEnv) -> dict[str, Any]:
    config = env.config()
    config["admin"] = {"enabled": False}
    for integration in config["integrations"].values():
        integration["reconcile"] = {"settle_s": 0.5}
    config["integrations"]["crm"]["verify_url"] = env.crm.url + "/contacts/{key}"
    config["integrations"]["crm"]["verify_fields_at"] = "fields"
    return config


def drift(report: dict[str, Any]) -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    out: dict[str, set[tuple[str, tuple[str, ...]]]] = {
        "missing": set(),
        "extra": set(),
        "different": set(),
    }
    for item in report["drift"]:
        out[item["kind"]].add((item["key"], tuple(item["fields"])))
    return out


class LiveWrites:
    """Inserts and updates in the source from a thread, until stopped."""

    def __init__(self, dsn: str, *, base: int) -> None:
        self.dsn, self.base, self.count = dsn, base, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LiveWrites:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                cid = self.base + self.count
                conn.execute(
                    "INSERT INTO customers (id, name, email) VALUES (%s, %s, %s)",
                    (cid, f"Live {cid}", f"live{cid}@example.com"),
                )
                conn.execute(
                    "INSERT INTO orders (id, customer_id, amount, status)"
                    " VALUES (%s, %s, 1, 'new')",
                    (cid, cid),
                )
                conn.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (cid,))
                self.count += 1
                time.sleep(0.05)


def test_postgres_target_drift_is_reported_exactly_and_repaired_while_writes_go_on(
    env: SyncEnv,
) -> None:
    run_workload(env.dsn, customers=15, orders=30, seed=21)
    env.wait_converged()
    code, report = reconcile(env, "analytics")
    assert (code, report["result"]) == (0, "equal"), report
    assert report["rows_checked"] == len(env.expected_orders())

    keys = sorted(env.analytics_orders(), key=int)
    gone, edited = keys[0], keys[1]
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM analytics.orders WHERE _cdc_key = %s", (gone,))
        conn.execute(
            "UPDATE analytics.orders SET amount = amount + 1 WHERE _cdc_key = %s", (edited,)
        )
        conn.execute(
            "INSERT INTO analytics.orders (_cdc_key, _cdc_version, order_id, customer_id,"
            " customer_crm_id, amount, status) VALUES ('999999', %s, 999999, 1, 'x', 1, 'new')",
            (Version.from_lsn(1, 0).to_bytes(),),
        )

    code, report = reconcile(env, "analytics")
    assert code == 3
    assert drift(report) == {
        "missing": {(gone, ())},
        "extra": {("999999", ())},
        "different": {(edited, ("amount",))},
    }
    assert (report["missing"], report["extra"], report["different"]) == (1, 1, 1)

    with LiveWrites(env.dsn, base=500_000) as writes:
        code, report = reconcile(env, "analytics", "--repair", "--wait", "20")
        assert code == 3 and report["repaired"] == 3, (report, env.capture.log_text()[-5000:])
        assert not report["notes"], (report, env.capture.log_text()[-5000:])
        time.sleep(0.5)
    assert writes.count > 0
    env.wait_converged()
    code, report = reconcile(env, "analytics")
    assert (code, report["result"]) == (0, "equal"), report
