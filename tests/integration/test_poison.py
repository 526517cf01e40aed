"""Poisoned records: one record that can be neither applied nor dead-lettered the normal way
is dead-lettered anyway, and neither the process nor another integration stops for it,
also after a restart that reads the same record again (no crash loop).

Real servers throughout (PostgreSQL, the broker, the registry, the test CRM), cdcsync as
child processes.
"""

from __future__ import annotations

import json
import os
import time

import psycopg
import pytest
import yaml
from confluent_kafka import Producer

from cdc.config import parse_config
from cdc.config.names import inbound_topic
from mappers.inbound import InboundChange
from tests.integration.harness import spawn_cdcsync, terminate
from tests.integration.inbound_harness import (
    INBOUND_SECRET,
    STATE_SCHEMA,
    CrmClient,
    InboundEnv,
    wait_for_endpoint,
)
from tests.integration.sync_harness import CRM_SECRET, SyncEnv, run_workload


@pytest.fixture
def env(sync_env: SyncEnv) -> InboundEnv:
    return InboundEnv.create(sync_env)


def _dead_letters(dsn: str, integration: str) -> list[tuple[str | None, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT key, error FROM {STATE_SCHEMA}.dead_letters WHERE integration = %s"
            " ORDER BY id",
            (integration,),
        ).fetchall()
    return [(r[0], str(r[1])) for r in rows]


def _poisoned_change(external_id: str) -> InboundChange:
    now_us = time.time_ns() // 1000
    return InboundChange(
        integration="crm",
        entity="contact",
        external_id=external_id,
        op="upsert",
        version_us=now_us,
        idempotency_key=f"poison-{now_us}",
        received_at_us=now_us,
        fields={"name": "Nul", "email": "nul@example.com", "updated_at": "2026-01-02T03:04:05Z"},
    )


def test_an_inbound_change_with_a_nul_id_is_dead_lettered_and_sync_survives_it_and_restarts(
    env: InboundEnv,
) -> None:
    env.sync.capture.start()
    env.sync.capture.wait_for_slot()
    first = env.start_sync()
    wait_for_endpoint(env, first)
    run_workload(env.sync.dsn, customers=3, orders=2, seed=3)
    env.wait_all_equal()
    crm = CrmClient(env)
    # A change queued before the endpoint refused such ids (the endpoint now answers 400):
    # the database refuses NUL in text, in the row and in the dead letter's key alike.
    config = parse_config(
        yaml.safe_load(env.config_path.read_text()),
        env={"CRM_SECRET": CRM_SECRET, "CRM_INBOUND_SECRET": INBOUND_SECRET},
    )
    poisoned = _poisoned_change("a\x00b")
    producer = Producer({"bootstrap.servers": env.sync.capture.bootstrap})
    producer.produce(inbound_topic(config, "crm"), poisoned.to_json(), key=poisoned.partition_key)
    assert producer.flush(30) == 0
    keys = sorted(env.sync.crm_contacts())
    after = crm.edit(keys[0], email="after-poison@example.com")
    assert after is not None
    assert env.wait_outcomes({after})[after] in ("applied", "lost")
    assert first.poll() is None, env.sync.sync_log()[-4000:]
    ((key, error),) = _dead_letters(env.sync.dsn, "crm.inbound")
    assert key == "contact/a\\x00b"
    assert "NUL" in error
    # Restarted, the worker goes on from the committed offset: the poisoned record is not
    # read again, and the next change applies.
    terminate([first])
    second = env.start_sync()
    wait_for_endpoint(env, second)
    again = crm.edit(keys[1], email="after-restart@example.com")
    assert again is not None
    assert env.wait_outcomes({again})[again] in ("applied", "lost")
    assert second.poll() is None, env.sync.sync_log()[-4000:]
    assert len(_dead_letters(env.sync.dsn, "crm.inbound")) == 1
    env.wait_all_equal()
    assert "Traceback" not in env.sync.sync_log()
    crm.close()


NUL_ERROR_MAPPER = """
from mappers.examples import customer_to_contact as _mapped

def customer_to_contact(event, ctx):
    row = event.after or {}
    if row.get("id") == 2:
        raise ValueError("cannot map customer 2: name \\x00 holds a NUL")
    return _mapped(event, ctx)
"""


def test_a_record_whose_error_the_state_store_refuses_is_dead_lettered_and_sync_goes_on(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    (env.capture.workdir / "nul_mappers.py").write_text(NUL_ERROR_MAPPER)
    config = env.config()
    config["integrations"]["crm"]["mapper"] = "nul_mappers:customer_to_contact"
    path = env.capture.workdir / "poison.yaml"
    path.write_text(yaml.safe_dump(config))
    env.capture.start()
    env.capture.wait_for_slot()
    proc_env = {
        "CRM_SECRET": CRM_SECRET,
        "PYTHONPATH": os.pathsep.join([str(env.capture.workdir), os.environ.get("PYTHONPATH", "")]),
    }
    log = env.capture.workdir / "sync.log"
    first = spawn_cdcsync("sync", path, log, env=proc_env)
    env.sync_procs.append(first)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for cid in range(1, 5):
            conn.execute(
                "INSERT INTO customers (id, name, email) VALUES (%s, %s, %s)",
                (cid, f"Customer {cid}", f"c{cid}@example.com"),
            )

    def wait_crm(ids: set[str]) -> None:
        deadline = time.monotonic() + 60
        while set(env.crm_contacts()) != ids and time.monotonic() < deadline:
            assert first.poll() is None or first is not env.sync_procs[-1], env.sync_log()
            time.sleep(0.2)
        assert set(env.crm_contacts()) == ids, env.sync_log()[-4000:]

    wait_crm({"1", "3", "4"})
    assert first.poll() is None, env.sync_log()[-4000:]
    ((key, error),) = _dead_letters(env.dsn, "crm")
    assert "\\x00 holds a NUL" in error
    terminate([first])
    second = spawn_cdcsync("sync", path, log, env=proc_env)
    env.sync_procs.append(second)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (id, name, email) VALUES (5, 'C5', 'c5@example.com')")
    wait_crm({"1", "3", "4", "5"})
    assert second.poll() is None
    assert len(_dead_letters(env.dsn, "crm")) == 1
    json.dumps(key)
