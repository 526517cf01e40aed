"""Inbound changes end to end: the CRM writes back while the application writes too.

Real servers throughout: PostgreSQL, the Kafka-protocol broker, the registry, capture and
sync as child processes, the test CRM over HTTP. See ``inbound_harness``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from tests.integration.harness import Event, EventReader
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


def _started(env: InboundEnv, *, customers: int) -> CrmClient:
    """Capture and sync running, ``customers`` synced everywhere; a CRM client."""
    env.sync.capture.start()
    env.sync.capture.wait_for_slot()
    proc = env.start_sync()
    wait_for_endpoint(env, proc)
    run_workload(env.sync.dsn, customers=customers, orders=5, seed=11)
    env.wait_all_equal()
    return CrmClient(env)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _email(event: Event) -> object:
    return ((event.value or {}).get("after") or {}).get("email")


def _app_writes(dsn: str, ids: list[str], *, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(count):
            conn.execute(
                "UPDATE customers SET email = %s, phone = %s, updated_at = clock_timestamp()"
                " WHERE id = %s",
                (f"app{n}@example.com", f"+1-555-{n:04d}", int(rng.choice(ids))),
            )
            time.sleep(rng.random() * 0.02)


def test_concurrent_app_and_crm_writes_converge_and_every_accepted_change_is_applied_or_lost(
    env: InboundEnv,
) -> None:
    crm = _started(env, customers=10)
    keys = sorted(env.sync.crm_contacts())
    app = threading.Thread(
        target=_app_writes, args=(env.sync.dsn, keys), kwargs={"count": 40, "seed": 5}
    )
    app.start()
    rng = random.Random(6)
    for n in range(30):
        crm.edit(rng.choice(keys), email=f"crm{n}@example.com", phone=f"+44-{n:04d}")
        time.sleep(rng.random() * 0.02)
    app.join()
    # A stale change (edited long ago, delivered late) loses to the database's newer row.
    target = keys[0]
    contact = env.sync.crm.store.contact(target)
    assert contact is not None
    stale = crm.post(
        contact.id,
        {"name": "Stale", "email": "stale@example.com", "updated_at": "2001-01-01T00:00:00Z"},
    )
    # A request sent again (a client that missed the answer): accepted, applied once.
    retried = crm.accepted[0]
    crm.repost(retried)
    outcomes = env.wait_outcomes(set(crm.accepted))
    assert outcomes[stale] == "lost"
    assert {outcomes[k] for k in crm.accepted} <= {"applied", "lost"}
    assert any(outcomes[k] == "applied" for k in crm.accepted)
    env.wait_all_equal()
    assert env.sync.source_customers()[target]["email"] != "stale@example.com"
    with psycopg.connect(env.sync.dsn) as conn:
        count = conn.execute(
            f"SELECT count(*) FROM {STATE_SCHEMA}.inbound_changes WHERE idempotency_key = %s",
            (retried,),
        ).fetchone()
    assert count == (1,)
    inbound = env.status()["integrations"]["crm"]["inbound"]
    assert inbound["duplicate"] >= 1
    assert inbound["applied"] + inbound["lost"] == len(set(crm.accepted))
    crm.close()


def _control(env: InboundEnv, name: str, action: str) -> None:
    response = httpx.post(f"{env.url}/integrations/{name}/{action}", timeout=5)
    response.raise_for_status()
    deadline = time.monotonic() + 30
    while env.status()["integrations"][name]["paused"] != (action == "pause"):
        assert time.monotonic() < deadline, f"{name} not {action}d"
        time.sleep(0.1)


def test_a_crm_edit_replaced_there_by_an_older_source_write_is_sent_back_to_the_crm(
    env: InboundEnv,
) -> None:
    """The application writes a row, then the CRM edits the same contact before that write
    reached it. The database keeps the edit (newer in the inbound clock); the application's
    write then reaches the CRM and replaces the edit there. The edit's echo must be sent,
    or the CRM keeps a row the database no longer holds."""
    crm = _started(env, customers=3)
    key = sorted(env.sync.crm_contacts())[0]
    _control(env, "crm", "pause")
    requests = env.sync.crm.store.stats().requests
    with psycopg.connect(env.sync.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE customers SET email = 'app-first@example.com', updated_at = clock_timestamp()"
            " WHERE id = %s",
            (int(key),),
        )
    accepted = crm.edit(key, email="crm-later@example.com", phone="+33-2")
    assert accepted is not None
    assert env.wait_outcomes({accepted})[accepted] == "applied"
    assert env.sync.crm.store.stats().requests == requests  # the app's write is still queued
    _control(env, "crm", "resume")
    env.wait_all_equal()
    assert env.sync.crm_contacts()[key]["email"] == "crm-later@example.com"
    assert env.status()["integrations"]["crm"]["applied"] >= 2  # the write, then the echo
    crm.close()


def test_a_snapshot_read_of_rows_the_crm_wrote_is_not_sent_back_to_the_crm(
    env: InboundEnv,
) -> None:
    """An incremental snapshot reads every row again. A row the CRM created (it has no
    key of ours there) and a row it edited last are its own writes: their reads must not
    be sent to it (the created one would become a second contact), while other
    integrations receive them."""
    crm = _started(env, customers=3)
    key = sorted(env.sync.crm_contacts())[0]
    edited = crm.edit(key, email="edited-in-crm@example.com", phone="+33-3")
    created = crm.post(
        "crm-made-2", {"name": "Made In CRM", "email": "m@example.com", "updated_at": _now()}
    )
    assert edited is not None
    outcomes = env.wait_outcomes({edited, created})
    assert (outcomes[edited], outcomes[created]) == ("applied", "created")
    with psycopg.connect(env.sync.dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT key FROM {STATE_SCHEMA}.identities"
            " WHERE integration = 'crm' AND external_id = 'crm-made-2'"
        ).fetchone()
        assert row is not None
        made = str(row[0])
    requests = env.sync.crm.store.stats().requests
    echoes = env.status()["integrations"]["crm"]["echo"]
    config = env.sync.capture.workdir / "cdcsync.yaml"
    snapshot = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdc.cli",
            "snapshot",
            "--config",
            str(config),
            "--quiet",
            "public.customers",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert snapshot.returncode == 0, snapshot.stdout + snapshot.stderr
    # The reads reach the CRM's worker: the two written back are skipped, the others sent.
    deadline = time.monotonic() + 60
    while env.status()["integrations"]["crm"]["echo"] < echoes + 2:
        assert time.monotonic() < deadline, env.status()["integrations"]["crm"]
        time.sleep(0.2)
    deadline = time.monotonic() + 60
    while env.sync.crm.store.stats().requests < requests + 2:  # the two other customers
        assert time.monotonic() < deadline, env.sync.crm.store.stats()
        time.sleep(0.2)
    assert env.sync.crm.store.contact(made) is None  # never created a second time
    assert env.sync.crm_contacts()[key]["email"] == "edited-in-crm@example.com"
    assert env.profiles()[made]["name"] == "Made In CRM"
    crm.close()


def test_a_change_written_back_by_the_crm_reaches_profiles_but_is_not_sent_back_to_the_crm(
    env: InboundEnv,
) -> None:
    crm = _started(env, customers=4)
    key = sorted(env.sync.crm_contacts())[0]
    requests_before = env.sync.crm.store.stats().requests
    accepted = crm.edit(key, email="desk-fix@example.com", phone="+33-1")
    assert accepted is not None
    # A contact created in the CRM becomes a new customer, linked through the identity map.
    created = crm.post(
        "crm-made-1",
        {"name": "New In CRM", "email": "new@example.com", "updated_at": _now()},
    )
    outcomes = env.wait_outcomes({accepted, created})
    assert (outcomes[accepted], outcomes[created]) == ("applied", "created")
    with psycopg.connect(env.sync.dsn) as conn:
        row = conn.execute(
            f"SELECT c.id, c.name FROM customers c JOIN {STATE_SCHEMA}.identities i"
            " ON i.key = c.id::text WHERE i.integration = 'crm' AND i.external_id = 'crm-made-1'"
        ).fetchone()
    assert row is not None and row[1] == "New In CRM"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        profiles = env.profiles()
        crm_worker = env.status()["integrations"]["crm"]
        if (
            profiles.get(key, {}).get("email") == "desk-fix@example.com"
            and str(row[0]) in profiles
            and crm_worker["echo"] >= 2
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"profiles={env.profiles()} status={env.status()}")
    # Both reached profiles; the CRM's sync skipped them: it was asked nothing.
    assert env.sync.crm.store.stats().requests == requests_before
    # The written-back change's event carries its real commit time (not the origin's 0).
    reader = EventReader(
        env.sync.capture.bootstrap,
        env.sync.capture.registry_url,
        [env.sync.capture.topic("public.customers")],
    )
    try:
        events = reader.read_until(
            lambda evs: any(_email(e) == "desk-fix@example.com" for e in evs),
            timeout=30,
        )
    finally:
        reader.close()
    (echo,) = [e for e in events if _email(e) == "desk-fix@example.com"]
    assert echo.value is not None
    assert abs(echo.value["source"]["ts_ms"] / 1000 - time.time()) < 600
    metrics = httpx.get(env.url + "/metrics", timeout=5).text
    assert 'cdcsync_skipped_total{integration="crm",reason="echo"} 2.0' in metrics
    assert 'cdcsync_skipped_total{integration="profiles",reason="echo"} 0.0' in metrics
    assert 'cdcsync_inbound_changes_total{integration="crm",outcome="applied"} 2.0' in metrics
    assert env.sync.crm.store.contact(str(row[0])) is None
    assert env.all_equal() is False  # only the CRM-made row is missing on the CRM side
    source = env.sync.source_customers()
    assert env.sync.crm_contacts()[key] == source[key] == env.profiles()[key]
    crm.close()


def test_kill_9_during_inbound_apply_loses_nothing_and_applies_nothing_twice(
    env: InboundEnv,
) -> None:
    with psycopg.connect(env.sync.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.customer_writes (id bigint, email text);"
            "CREATE FUNCTION public.log_customer_write() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO public.customer_writes VALUES (NEW.id, NEW.email);"
            " RETURN NEW; END $$;"
            "CREATE TRIGGER log_write AFTER UPDATE ON public.customers FOR EACH ROW"
            " EXECUTE FUNCTION public.log_customer_write();"
        )
    crm = _started(env, customers=6)
    keys = sorted(env.sync.crm_contacts())
    first = env.sync.sync_procs[-1]
    rng = random.Random(9)
    emails: dict[str, str] = {}

    def edit(n: int, contact: str) -> None:
        key = crm.edit(contact, email=f"kill{n}@example.com")
        assert key is not None
        emails[key] = f"kill{n}@example.com"

    for n in range(6):
        edit(n, rng.choice(keys))
    # The application holds a row; the change to it stops inside its apply transaction
    # (marker written, waiting for the row lock) when sync is killed.
    blocker = psycopg.connect(env.sync.dsn)
    try:
        blocker.execute("SELECT 1 FROM customers WHERE id = %s FOR UPDATE", (int(keys[0]),))
        edit(6, keys[0])
        _wait_for_lock_wait(env)
        first.send_signal(signal.SIGKILL)
        first.wait()
        env.start_sync()
        for n in range(7, 12):
            edit(n, rng.choice(keys))
    finally:
        blocker.rollback()  # the killed apply's transaction now fails; nothing of it stays
        blocker.close()
    for n in range(12, 24):
        edit(n, rng.choice(keys))
        if n == 16:
            # The database drops the worker's connection: it reconnects and goes on.
            with psycopg.connect(env.sync.dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'cdcsync-inbound-crm'"
                )
    outcomes = env.wait_outcomes(set(emails))
    assert set(outcomes.values()) <= {"applied", "lost"}
    with psycopg.connect(env.sync.dsn) as conn:
        writes = dict(
            conn.execute(
                "SELECT email, count(*) FROM public.customer_writes"
                " WHERE email LIKE 'kill%%' GROUP BY email"
            ).fetchall()
        )
    for key, email in emails.items():
        assert writes.get(email, 0) == (1 if outcomes[key] == "applied" else 0), email
    env.wait_all_equal()
    assert "Traceback" not in env.sync.sync_log()
    crm.close()


def _wait_for_lock_wait(env: InboundEnv, timeout: float = 30) -> None:
    """Until the inbound worker's database session waits for a row lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(env.sync.dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'cdcsync-inbound-crm' AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"the inbound worker never waited for the lock:\n{env.sync.sync_log()}")


def _cdcsync(env: InboundEnv, *args: str) -> str:
    """Run a cdcsync command against the running sync's config; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "cdc.cli", *args, "--config", str(env.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CRM_SECRET": CRM_SECRET, "CRM_INBOUND_SECRET": INBOUND_SECRET},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_change_the_database_refuses_is_dead_lettered_and_applies_once_replayed(
    env: InboundEnv,
) -> None:
    crm = _started(env, customers=4)
    with psycopg.connect(env.sync.dsn) as conn:
        row = conn.execute("SELECT customer_id FROM orders ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    customer = str(row[0])
    contact = env.sync.crm.store.contact(customer)
    assert contact is not None
    # The CRM deletes a contact whose customer still has orders: the foreign key refuses.
    key = crm.post(contact.id, {"updated_at": _now()}, method="DELETE")
    deadline = time.monotonic() + 60
    while not env.dead_letters() and time.monotonic() < deadline:
        time.sleep(0.2)
    (letter,) = json.loads(_cdcsync(env, "dlq", "list", "crm", "--inbound", "--json"))
    assert "foreign key" in letter["error"]
    assert letter["key"] == f"contact/{contact.id}"
    assert key not in env.outcomes()
    assert customer in env.sync.source_customers()
    # Fixed in the application; the dead letter goes back on the queue and applies once.
    with psycopg.connect(env.sync.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM orders WHERE customer_id = %s", (int(customer),))
    assert "1 inbound dead letters re-enqueued" in _cdcsync(
        env, "dlq", "replay", "crm", "--inbound"
    )
    assert env.wait_outcomes({key})[key] == "deleted"
    assert customer not in env.sync.source_customers()
    assert "0 inbound dead letters re-enqueued" in _cdcsync(
        env, "dlq", "replay", "crm", "--inbound"
    )
    deadline = time.monotonic() + 60
    while customer in env.profiles() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert customer not in env.profiles(), env.status()["integrations"]["profiles"]
    crm.close()


def test_replaying_the_inbound_queue_restores_what_a_database_restore_lost_and_only_that(
    env: InboundEnv,
) -> None:
    crm = _started(env, customers=3)
    key = crm.edit("1", email="from-crm@example.com")
    assert key is not None
    outcome = env.wait_outcomes({key})[key]
    assert env.sync.source_customers()["1"]["email"] == "from-crm@example.com"
    # A restore from a backup taken before that change: the row and the marker go back.
    with psycopg.connect(env.sync.dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            f"DELETE FROM {STATE_SCHEMA}.inbound_changes WHERE idempotency_key = %s", (key,)
        )
        conn.execute(
            "UPDATE customers SET email = 'backup@example.com',"
            " updated_at = '2000-01-01T00:00:00Z' WHERE id = 1"
        )
    dry = _cdcsync(env, "replay", "crm", "--inbound", "--from-beginning", "--dry-run")
    assert "would be re-enqueued" in dry
    assert key not in env.outcomes()
    out = _cdcsync(env, "replay", "crm", "--inbound", "--from-beginning", "--json")
    summary = json.loads(out)
    assert summary["requeued"] == summary["read"] >= 1
    assert env.wait_outcomes({key})[key] == outcome
    assert env.sync.source_customers()["1"]["email"] == "from-crm@example.com"
    # Replayed again: every change is already held, nothing moves.
    marked = env.outcomes()
    _cdcsync(env, "replay", "crm", "--inbound", "--from-beginning")
    time.sleep(2)
    assert env.outcomes() == marked
    assert env.sync.source_customers()["1"]["email"] == "from-crm@example.com"
    env.wait_all_equal()
    crm.close()
    refused = subprocess.run(
        [
            *(sys.executable, "-m", "cdc.cli", "replay", "profiles", "--inbound"),
            *("--from-beginning", "--config", str(env.config_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CRM_SECRET": CRM_SECRET, "CRM_INBOUND_SECRET": INBOUND_SECRET},
        check=False,
    )
    assert refused.returncode == 2
    assert "integration 'profiles' has no inbound section" in refused.stderr
