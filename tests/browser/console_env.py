"""A ``cdcsync run`` with capture, sync and the web console, and Chromium to look at it.

``ConsoleRun`` starts the real command (child process) against the sample schema, the
test CRM and the analytics table (``tests.integration.sync_harness``), with an admin
token and the CRM's health checked every second, on a known port. ``chromium_path``
finds Debian's ``chromium`` (``CDCSYNC_CHROMIUM`` overrides); Playwright drives that
binary and never downloads a browser of its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from cdc.demo.throwaway import free_port
from tests.integration.harness import spawn_cdcsync, wait_while_running
from tests.integration.sync_harness import CRM_SECRET, SyncEnv

TOKEN = "console-admin-token"
# Keys of the customers the CRM refuses (HTTP 400) while a test wants dead letters.
REJECTED = ("9001", "9002", "9003")


def chromium_path() -> str | None:
    """Debian's chromium, or the binary named by ``CDCSYNC_CHROMIUM``."""
    explicit = os.environ.get("CDCSYNC_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class ConsoleRun:
    """``cdcsync run`` serving the console at ``url``; stopped with the ``SyncEnv``."""

    def __init__(self, env: SyncEnv, *, token: str = TOKEN) -> None:
        self.env = env
        self.token = token
        self.port = free_port()
        config = env.config()
        config["admin"] = {
            "listen": f"127.0.0.1:{self.port}",
            "probe_interval_s": 1.0,
            "token": token,
        }
        for integration in config["integrations"].values():
            integration["health_check_interval_s"] = 1.0
        self.config_path = env.capture.workdir / "console.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = env.capture.workdir / "console-run.log"
        self.proc = spawn_cdcsync(
            "run", self.config_path, self.log_path, env={"CRM_SECRET": CRM_SECRET}
        )
        env.sync_procs.append(self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str) -> Any:
        response = httpx.get(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=5
        )
        response.raise_for_status()
        return response.json()

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
        wait_while_running(self.proc, self.log, what, predicate, timeout=timeout)

    def wait_ready(self) -> None:
        self.wait_until(
            "ready", lambda: httpx.get(self.url + "/ready", timeout=5).status_code == 200
        )


def insert_customers(dsn: str, ids: range | list[int]) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for cid in ids:
            conn.execute(
                "INSERT INTO customers (id, name, email) VALUES (%s, %s, %s)",
                (cid, f"Customer {cid}", f"c{cid}@example.com"),
            )


def insert_order(dsn: str, order_id: int, *, customer: int, amount: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (id, customer_id, amount, status) VALUES (%s, %s, %s, 'new')",
            (order_id, customer, amount),
        )


def start_console(
    *, pg_dsn: str, bootstrap: str, registry_url: str, prefix: str, workdir: Path
) -> tuple[SyncEnv, ConsoleRun]:
    """The sample schema, a test CRM and ``cdcsync run`` with the console, ready."""
    env = SyncEnv.create(
        pg_dsn=pg_dsn,
        bootstrap=bootstrap,
        registry_url=registry_url,
        prefix=prefix,
        workdir=workdir,
    )
    try:
        run = ConsoleRun(env)
        run.wait_ready()
    except BaseException:
        env.stop()
        raise
    return env, run
