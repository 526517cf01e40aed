"""Sync end to end: capture -> Kafka -> mappers -> the CRM (HTTP) and analytics (PostgreSQL)."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest
from confluent_kafka import Consumer

from tests.integration.sync_harness import SyncEnv, run_workload


@pytest.fixture
def env(sync_env: SyncEnv) -> SyncEnv:
    return sync_env


def _alive(env: SyncEnv) -> None:
    for proc in env.sync_procs:
        code = proc.poll()
        assert code in (None, 0, -signal.SIGKILL), f"sync exited {code}:\n{env.sync_log()}"


def test_targets_equal_the_source_after_a_mixed_workload(env: SyncEnv) -> None:
    env.capture.start()
    env.capture.wait_for_slot()
    env.start_sync()
    run_workload(env.dsn, customers=40, orders=150, seed=1)
    env.wait_converged(check=lambda: _alive(env))
    contacts = env.crm.store.contacts()
    assert all(c.id.startswith("crm-") for c in contacts.values())
    # Each order carries its customer's CRM id, resolved through the identity map.
    assert all(order[2] is not None for order in env.analytics_orders().values())


def test_redelivering_everything_changes_nothing(env: SyncEnv) -> None:
    env.capture.start()
    env.capture.wait_for_slot()
    first = env.start_sync()
    run_workload(env.dsn, customers=20, orders=60, seed=2)
    env.wait_converged(check=lambda: _alive(env))
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    before = env.crm.store.stats()
    orders_before = env.analytics_orders()
    # A new consumer group reads every event again from the beginning.
    env.start_sync(group_suffix="-again")
    time.sleep(8)
    _alive(env)
    assert env.converged()
    assert env.analytics_orders() == orders_before
    after = env.crm.store.stats()
    # The sink's version guard skipped every replayed upsert without a request.
    assert after.applied == before.applied


def test_a_crm_outage_is_waited_out_and_nothing_is_lost(env: SyncEnv) -> None:
    env.capture.start()
    env.capture.wait_for_slot()
    env.start_sync()
    env.crm.store.set_faults(status=500, count=40)
    run_workload(env.dsn, customers=15, orders=30, seed=3)
    env.wait_converged(check=lambda: _alive(env))
    log = env.sync_log()
    assert "500" in log
    assert "crm: circuit open" in log and "crm: circuit closed" in log
    assert "dead-lettering" not in log


def test_a_permanently_rejected_entity_is_dead_lettered_while_others_flow(
    env: SyncEnv,
) -> None:
    env.capture.start()
    env.capture.wait_for_slot()
    env.start_sync()
    env.crm.store.set_faults(status=400, reject_keys=["7"])
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for cid in range(1, 13):
            conn.execute(
                "INSERT INTO customers (id, name, email) VALUES (%s, %s, %s)",
                (cid, f"Customer {cid}", f"c{cid}@example.com"),
            )
    dlq_topic = f"{env.capture.prefix}.dlq.crm"
    consumer = Consumer(
        {
            "bootstrap.servers": env.capture.bootstrap,
            "group.id": "dlq-reader",
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    try:
        deadline = time.monotonic() + 60
        dead = None
        consumer.subscribe([dlq_topic])
        while dead is None and time.monotonic() < deadline:
            _alive(env)
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                dead = msg
        assert dead is not None, env.sync_log()
    finally:
        consumer.close()
    headers = {k: v.decode() for k, v in dead.headers() or []}
    assert headers["cdcsync.origin.topic"] == f"{env.capture.prefix}.public.customers"
    assert headers["cdcsync.integration"] == "crm"
    assert "400" in headers["cdcsync.error"]
    assert int(headers["cdcsync.attempts"]) >= 1
    assert int(headers["cdcsync.origin.offset"]) >= 0
    deadline = time.monotonic() + 30
    while len(env.crm.store.contacts()) < 11 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(env.crm.store.contacts(), key=int) == [str(i) for i in range(1, 13) if i != 7]
    with psycopg.connect(env.dsn) as conn:
        row = conn.execute(
            "SELECT integration, error, attempts FROM cdcsync_state.dead_letters"
        ).fetchone()
    assert row is not None and row[0] == "crm" and "400" in row[1]


@pytest.mark.slow
def test_killing_sync_mid_batch_repeatedly_still_converges(env: SyncEnv) -> None:
    env.capture.start()
    env.capture.wait_for_slot()
    proc = env.start_sync()
    import threading

    writer = threading.Thread(
        target=run_workload, kwargs={"dsn": env.dsn, "customers": 60, "orders": 400, "seed": 4}
    )
    writer.start()
    kills = 0
    while writer.is_alive() or kills < 5:
        time.sleep(0.7)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = env.start_sync()
        if kills >= 12:
            break
    writer.join()
    env.wait_converged(timeout=120, check=lambda: _alive(env))
    assert kills >= 5
