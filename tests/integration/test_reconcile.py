"""``cdcsync reconcile`` against real servers: drift made by hand in each kind of target is
reported exactly, and ``--repair`` brings the target back through the pipeline while the
source keeps changing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
import yaml
from confluent_kafka import Consumer, Producer

from cdc.config import HttpSinkConfig, parse_config
from cdc.state.store import StateStore
from cdc.sync.sinks import Outcome
from cdc.sync.sinks.http import HttpSink
from mappers.entity import EntityUpsert, Version
from mappers.examples import Contact
from tests.integration.sync_harness import CRM_SECRET, SyncEnv, run_workload


@pytest.fixture
def env(sync_env: SyncEnv) -> SyncEnv:
    # One state store for capture and sync, as with one config file: the repair's snapshot
    # request is recorded where capture looks for it.
    capture_config = sync_env.capture.config

    def shared_state(**overrides: Any) -> dict[str, Any]:
        return {**capture_config(**overrides), "state": {"schema": "cdcsync_state"}}

    sync_env.capture.config = shared_state  # type: ignore[method-assign]
    # A third integration: the customers as contacts on a compacted Kafka entity topic.
    sync_config = sync_env.config

    def with_kafka_sink(**kwargs: Any) -> dict[str, Any]:
        config = sync_config(**kwargs)
        crm = config["integrations"]["crm"]
        config["integrations"]["entities"] = {
            "topics": crm["topics"],
            "mapper": crm["mapper"],
            "sink": {"type": "kafka", "topic": entity_topic(sync_env)},
            "group_id": crm["group_id"] + ".entities",
        }
        return config

    sync_env.config = with_kafka_sink  # type: ignore[method-assign]
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


def repair_trouble(report: dict[str, Any]) -> list[str]:
    """Notes saying a repair did not go through (others, e.g. keys written meanwhile, may)."""
    words = ("not repaired", "still differ", "not deleted", "refused")
    return [n for n in report["notes"] if any(w in n for w in words)]


def entity_topic(env: SyncEnv) -> str:
    return f"{env.capture.prefix}.entities.contacts"


def wait_equal(env: SyncEnv, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code, report = reconcile(env, name)
        if code == 0 or time.monotonic() > deadline:
            assert (code, report["result"]) == (0, "equal"), json.dumps(report)[:3000]
            return
        time.sleep(0.5)


def reconcile_config(env: SyncEnv) -> dict[str, Any]:
    config = env.config()
    config["admin"] = {"enabled": False}
    for integration in config["integrations"].values():
        integration["reconcile"] = {"settle_s": 0.2}
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
    code, report = reconcile(env, "analytics", "--keys", f"{edited} {keys[2]}")
    assert (code, report["rows_checked"]) == (3, 2)
    assert drift(report) == {"missing": set(), "extra": set(), "different": {(edited, ("amount",))}}

    with LiveWrites(env.dsn, base=500_000) as writes:
        code, report = reconcile(env, "analytics", "--repair", "--wait", "20")
        assert (code, report["repaired"], repair_trouble(report)) == (3, 3, []), report
        time.sleep(0.5)
    assert writes.count > 0
    env.wait_converged()
    code, report = reconcile(env, "analytics")
    assert (code, report["result"]) == (0, "equal"), report


def test_http_and_kafka_target_drift_is_reported_exactly_and_repaired_while_writes_go_on(
    env: SyncEnv,
) -> None:
    run_workload(env.dsn, customers=12, orders=0, seed=22)
    env.wait_converged()
    wait_equal(env, "entities")

    # The CRM: a contact lost, a contact edited by hand, a stray one a past run wrote.
    keys = sorted(env.crm_contacts(), key=int)
    with env.crm.store._lock:
        del env.crm.store._contacts[keys[0]]
        env.crm.store._contacts[keys[1]].fields["name"] = "Edited by hand"
    asyncio.run(write_stray_contact(env, "777777"))
    # The entity topic: a tombstone, a record with another email, a stray record.
    producer = Producer({"bootstrap.servers": env.capture.bootstrap})
    records = read_topic(env)
    edited = {**records[keys[3]], "email": "changed@example.com"}
    producer.produce(entity_topic(env), key=keys[2].encode(), value=None)
    producer.produce(entity_topic(env), key=keys[3].encode(), value=json.dumps(edited).encode())
    stray = {"customer_id": 888888, "name": "Stray", "email": None, "phone": None}
    stray["_version_bytes"] = Version.from_lsn(1, 0).to_bytes().hex()
    producer.produce(
        entity_topic(env),
        key=b"888888",
        value=json.dumps(stray).encode(),
        headers=[("cdc.entity", b"contact")],
    )
    assert producer.flush(10) == 0

    code, report = reconcile(env, "crm")
    assert code == 3
    assert drift(report) == {
        "missing": {(keys[0], ())},
        "extra": {("777777", ())},
        "different": {(keys[1], ("name",))},
    }
    code, report = reconcile(env, "entities")
    assert code == 3
    assert drift(report) == {
        "missing": {(keys[2], ())},
        "extra": {("888888", ())},
        "different": {(keys[3], ("email",))},
    }

    with LiveWrites(env.dsn, base=600_000) as writes:
        for name in ("crm", "entities"):
            code, report = reconcile(env, name, "--repair", "--wait", "20")
            assert (code, report["repaired"], repair_trouble(report)) == (3, 3, []), str(report)
        time.sleep(0.5)
    assert writes.count > 0
    env.wait_converged()
    wait_equal(env, "crm")
    wait_equal(env, "entities")


async def write_stray_contact(env: SyncEnv, key: str) -> None:
    """A contact written to the CRM through the sink by an earlier run, with no source row."""
    config = parse_config(env.config(), env={"CRM_SECRET": CRM_SECRET})
    sink_config = config.integrations["crm"].sink
    assert isinstance(sink_config, HttpSinkConfig)
    state = await StateStore.open(env.dsn, schema="cdcsync_state")
    sink = HttpSink("crm", sink_config, integration="crm", state=state)
    try:
        await sink.start()
        model = Contact(customer_id=int(key), name="Ghost", email=None, phone=None)
        upsert = EntityUpsert("contact", key, Version.from_lsn(1, 0), model)
        assert await sink.apply([upsert]) == [Outcome.APPLIED]
    finally:
        await sink.close()
        await state.close()


def read_topic(env: SyncEnv) -> dict[str, dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": env.capture.bootstrap,
            "group.id": f"t-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([entity_topic(env)])
    out: dict[str, dict[str, Any]] = {}
    idle = 0
    try:
        while idle < 2:
            msg = consumer.poll(0.3)
            if msg is None:
                idle += 1 if out else 0
                continue
            if msg.error() is None:
                value = msg.value()
                out[msg.key().decode()] = json.loads(value) if value else {}
    finally:
        consumer.close()
    return out
