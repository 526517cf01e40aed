"""Test harness for sync: capture + the two example integrations against real servers.

The source database gets the sample tables; capture and sync run as the real commands
(child processes, so tests can kill them); the CRM is the real HTTP server of
``cdc.demo.crm``; the analytics target is a table in another schema of the same database
(outside the publication).
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from cdc.demo.crm import CrmServer
from mappers.examples import SAMPLE_SCHEMA_SQL, example_integrations
from tests.fix_pg import drop_database
from tests.integration.harness import CaptureEnv, read_log, spawn_cdcsync, terminate

CRM_SECRET = "crm-signing-secret"


@dataclass
class SyncEnv:
    capture: CaptureEnv
    crm: CrmServer
    sync_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.capture.pg_dsn

    @classmethod
    def create(
        cls,
        *,
        pg_dsn: str,
        bootstrap: str,
        registry_url: str,
        prefix: str,
        workdir: Path,
    ) -> SyncEnv:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(SAMPLE_SCHEMA_SQL)
        capture = CaptureEnv(
            pg_dsn,
            bootstrap,
            registry_url,
            prefix,
            ["public.customers", "public.orders"],
            workdir,
        )
        crm = CrmServer(secret=CRM_SECRET).start()
        return cls(capture, crm)

    def config(self, *, group_suffix: str = "", **retry: Any) -> dict[str, Any]:
        config = self.capture.config()
        prefix = self.capture.prefix
        retry_config = {"attempts": 3, "initial_backoff_s": 0.05, "max_backoff_s": 0.5, **retry}
        integrations = example_integrations(
            topic_prefix=prefix,
            crm_url=self.crm.url,
            analytics_dsn=self.dsn,
            secret_env="CRM_SECRET",
            timeout_s=5,
        )
        integrations["crm"]["circuit"] = {"failure_threshold": 3, "reset_timeout_s": 0.5}
        for name, integration in integrations.items():
            integration["retry"] = retry_config
            integration["group_id"] = f"{prefix}.{name}{group_suffix}"
        config["integrations"] = integrations
        config["state"] = {"schema": "cdcsync_state"}
        return config

    def write_config(self, path: Path, *, group_suffix: str = "", **retry: Any) -> Path:
        path.write_text(yaml.safe_dump(self.config(group_suffix=group_suffix, **retry)))
        return path

    def start_sync(self, *, group_suffix: str = "", **retry: Any) -> subprocess.Popen[bytes]:
        path = self.capture.workdir / f"sync{group_suffix}.yaml"
        self.write_config(path, group_suffix=group_suffix, **retry)
        log = self.capture.workdir / "sync.log"
        proc = spawn_cdcsync("sync", path, log, env={"CRM_SECRET": CRM_SECRET})
        self.sync_procs.append(proc)
        return proc

    def sync_log(self) -> str:
        return read_log(self.capture.workdir / "sync.log")

    def stop(self) -> None:
        terminate(self.sync_procs)
        self.capture.stop_all()
        self.crm.stop()

    # ------------------------------------------------------------------ expectations

    def source_customers(self) -> dict[str, dict[str, Any]]:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT id, name, email, phone FROM customers").fetchall()
        return {
            str(r[0]): {"customer_id": r[0], "name": r[1], "email": r[2], "phone": r[3]}
            for r in rows
        }

    def crm_contacts(self) -> dict[str, dict[str, Any]]:
        return {key: dict(c.fields) for key, c in self.crm.store.contacts().items()}

    def expected_orders(self) -> dict[str, tuple[Any, ...]]:
        """Source orders joined with their customer's CRM id."""
        ids = {key: c.id for key, c in self.crm.store.contacts().items()}
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT id, customer_id, amount, status FROM orders ORDER BY id"
            ).fetchall()
        return {str(r[0]): (r[0], r[1], ids.get(str(r[1])), Decimal(r[2]), r[3]) for r in rows}

    def analytics_orders(self) -> dict[str, tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            exists = conn.execute("SELECT to_regclass('analytics.orders')").fetchone()
            if exists is None or exists[0] is None:
                return {}
            rows = conn.execute(
                "SELECT _cdc_key, order_id, customer_id, customer_crm_id, amount, status"
                " FROM analytics.orders"
            ).fetchall()
        return {r[0]: (r[1], r[2], r[3], Decimal(r[4]), r[5]) for r in rows}

    def converged(self) -> bool:
        return (
            self.crm_contacts() == self.source_customers()
            and self.analytics_orders() == self.expected_orders()
        )

    def wait_converged(
        self, timeout: float = 90, *, check: Callable[[], None] | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check is not None:
                check()
            if self.converged():
                return
            time.sleep(0.25)
        crm, src = self.crm_contacts(), self.source_customers()
        diff = {k for k in crm.keys() | src.keys() if crm.get(k) != src.get(k)}
        orders, want = self.analytics_orders(), self.expected_orders()
        odiff = {k for k in orders.keys() | want.keys() if orders.get(k) != want.get(k)}
        raise AssertionError(
            f"targets did not converge: contacts differ at {sorted(diff)[:10]}, orders at "
            f"{sorted(odiff)[:10]}\n--- sync log ---\n{self.sync_log()[-6000:]}\n"
            f"--- capture log ---\n{self.capture.log_text()[-3000:]}"
        )


@contextlib.contextmanager
def live_env(
    pg_server: Any, bootstrap: str, registry_url: str, tmp_path_factory: Any
) -> Iterator[SyncEnv]:
    """A database of its own with capture and sync running: for module-scoped fixtures."""
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    env = SyncEnv.create(
        pg_dsn=pg_server.dsn_for(dbname),
        bootstrap=bootstrap,
        registry_url=registry_url,
        prefix=f"m{uuid.uuid4().hex[:8]}",
        workdir=tmp_path_factory.mktemp("live"),
    )
    try:
        env.capture.start()
        env.capture.wait_for_slot()
        env.start_sync()
        yield env
    finally:
        env.stop()
        drop_database(pg_server.dsn, dbname)


def run_workload(dsn: str, *, customers: int, orders: int, seed: int, id_base: int = 0) -> None:
    """Inserts, updates and deletes over customers and orders, in small transactions."""
    rng = random.Random(seed)
    live_customers: list[int] = []
    live_orders: list[tuple[int, int]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(customers):
            cid = id_base + i + 1
            conn.execute(
                "INSERT INTO customers (id, name, email, phone) VALUES (%s, %s, %s, %s)",
                (cid, f"Customer {cid}", f"c{cid}@example.com", None),
            )
            live_customers.append(cid)
        for j in range(orders):
            oid = id_base + j + 1
            cid = rng.choice(live_customers)
            with conn.transaction():
                conn.execute(
                    "INSERT INTO orders (id, customer_id, amount, status)"
                    " VALUES (%s, %s, %s, 'new')",
                    (oid, cid, Decimal(rng.randint(100, 99_999)) / 100),
                )
                if rng.random() < 0.3:
                    other = rng.choice(live_customers)
                    conn.execute(
                        "UPDATE customers SET email = %s, phone = %s,"
                        " updated_at = clock_timestamp() WHERE id = %s",
                        (f"new{j}@example.com", f"+1-555-{j:04d}", other),
                    )
            live_orders.append((oid, cid))
            roll = rng.random()
            if roll < 0.2 and live_orders:
                order_id, _ = rng.choice(live_orders)
                conn.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order_id,))
            elif roll < 0.27 and live_orders:
                order_id, _ = live_orders.pop(rng.randrange(len(live_orders)))
                conn.execute("DELETE FROM orders WHERE id = %s", (order_id,))
        # Delete a few customers without orders.
        busy = {cid for _, cid in live_orders}
        for cid in [c for c in live_customers if c not in busy][:3]:
            conn.execute("DELETE FROM customers WHERE id = %s", (cid,))
