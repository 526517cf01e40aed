"""Test harness for inbound changes: the sync harness plus the CRM writing back.

``InboundEnv`` wraps a ``SyncEnv`` (capture, the test CRM, the two example integrations)
and adds: the CRM integration's inbound side (bodies signed with ``INBOUND_SECRET``), a
third integration ``profiles`` (customers -> ``analytics.contacts``, a PostgreSQL sink) that
must receive the changes the CRM writes back, and a sync process whose admin listener (the
inbound endpoint) is on a known port. ``CrmClient`` plays the CRM: it edits a contact in its
own store and posts the change, retrying until cdcsync accepts it (202).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from cdc.inbound.endpoint import sign
from mappers.examples_inbound import INBOUND_SCHEMA_SQL, crm_inbound_config
from tests.integration.harness import spawn_cdcsync
from tests.integration.sync_harness import CRM_SECRET, SyncEnv
from tests.integration.test_admin import free_port

INBOUND_SECRET = "crm-inbound-secret"
STATE_SCHEMA = "cdcsync_state"


@dataclass
class InboundEnv:
    sync: SyncEnv
    port: int = field(default_factory=free_port)

    @classmethod
    def create(cls, sync: SyncEnv) -> InboundEnv:
        with psycopg.connect(sync.dsn, autocommit=True) as conn:
            conn.execute(INBOUND_SCHEMA_SQL)
            # Two sinks creating their tables in one new schema at once may collide.
            conn.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        # Capture reads the inbound markers (which row an inbound write left) there too.
        sync.capture.state_schema = STATE_SCHEMA
        return cls(sync)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        config = self.sync.config()
        config["integrations"]["crm"]["inbound"] = crm_inbound_config(
            secret_env="CRM_INBOUND_SECRET"
        )
        config["integrations"]["profiles"] = {
            "topics": [f"{self.sync.capture.prefix}.public.customers"],
            "mapper": {
                "entity": "contact",
                "key": "id",
                "fields": {"customer_id": "id", "name": "name", "email": "email", "phone": "phone"},
                "version_column": "updated_at",
                "model": "mappers.examples:Contact",
            },
            "sink": {
                "type": "postgres",
                "dsn": self.sync.dsn,
                "table": "analytics.contacts",
                "create_table": True,
            },
            "group_id": f"{self.sync.capture.prefix}.profiles",
        }
        config["admin"] = {"listen": f"127.0.0.1:{self.port}"}
        return config

    @property
    def config_path(self) -> Path:
        return self.sync.capture.workdir / "inbound.yaml"

    def start_sync(self) -> subprocess.Popen[bytes]:
        path = self.config_path
        path.write_text(yaml.safe_dump(self.config()))
        proc = spawn_cdcsync(
            "sync",
            path,
            self.sync.capture.workdir / "sync.log",
            env={"CRM_SECRET": CRM_SECRET, "CRM_INBOUND_SECRET": INBOUND_SECRET},
        )
        self.sync.sync_procs.append(proc)
        return proc

    def status(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/status", timeout=5)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    # ------------------------------------------------------------------ state

    def profiles(self) -> dict[str, dict[str, Any]]:
        with psycopg.connect(self.sync.dsn) as conn:
            if conn.execute("SELECT to_regclass('analytics.contacts')").fetchone() == (None,):
                return {}
            rows = conn.execute(
                "SELECT _cdc_key, customer_id, name, email, phone FROM analytics.contacts"
            ).fetchall()
        return {
            r[0]: {"customer_id": r[1], "name": r[2], "email": r[3], "phone": r[4]} for r in rows
        }

    def outcomes(self) -> dict[str, str]:
        """Idempotency-Key -> outcome of every inbound change the database recorded."""
        with psycopg.connect(self.sync.dsn) as conn:
            if conn.execute(
                "SELECT to_regclass(%s)", (f"{STATE_SCHEMA}.inbound_changes",)
            ).fetchone() == (None,):
                return {}
            rows = conn.execute(
                f"SELECT idempotency_key, outcome FROM {STATE_SCHEMA}.inbound_changes"
            ).fetchall()
        return {str(k): str(v) for k, v in rows}

    def dead_letters(self) -> list[str]:
        """The errors of the CRM's inbound dead letters."""
        with psycopg.connect(self.sync.dsn) as conn:
            rows = conn.execute(
                f"SELECT error FROM {STATE_SCHEMA}.dead_letters WHERE integration = 'crm.inbound'"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def wait_outcomes(self, keys: set[str], *, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.outcomes()
            if keys <= found.keys():
                return found
            time.sleep(0.2)
        missing = sorted(keys - self.outcomes().keys())
        raise AssertionError(
            f"{len(missing)} accepted changes have no outcome, e.g. {missing[:5]}\n"
            f"--- sync log ---\n{self.sync.sync_log()[-6000:]}"
        )

    def all_equal(self) -> bool:
        source = self.sync.source_customers()
        return self.sync.crm_contacts() == source and self.profiles() == source

    def wait_all_equal(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.all_equal():
                return
            time.sleep(0.25)
        source, crm, profiles = (
            self.sync.source_customers(),
            self.sync.crm_contacts(),
            self.profiles(),
        )
        diff = sorted(
            k
            for k in source.keys() | crm.keys() | profiles.keys()
            if not (source.get(k) == crm.get(k) == profiles.get(k))
        )
        first = diff[0] if diff else None
        raise AssertionError(
            f"database, CRM and profiles differ at {diff[:10]}: e.g. {first}: "
            f"db={source.get(first or '')} crm={crm.get(first or '')} "
            f"profiles={profiles.get(first or '')}\n"
            f"--- sync log ---\n{self.sync.sync_log()[-6000:]}"
        )


class CrmClient:
    """The CRM posting its own changes to cdcsync's inbound endpoint."""

    def __init__(self, env: InboundEnv) -> None:
        self.env = env
        self.http = httpx.Client(timeout=15)
        self.accepted: list[str] = []
        self.sent: dict[str, tuple[str, dict[str, Any], str | None]] = {}

    def close(self) -> None:
        self.http.close()

    def edit(self, key: str, *, email: str, phone: str | None = None) -> str | None:
        """Edit contact ``key`` in the CRM and post it; the Idempotency-Key, once accepted."""
        contact = self.env.sync.crm.store.edit(key, {"email": email, "phone": phone})
        if contact is None:
            return None
        now_us = time.time_ns() // 1000
        body = {
            "name": contact.fields["name"],
            "email": email,
            "phone": phone,
            "updated_at": datetime.fromtimestamp(now_us / 1e6, UTC).isoformat(),
        }
        base = (contact.version_bytes or b"").hex()
        return self.post(contact.id, body, base=base)

    def repost(self, key: str) -> None:
        """Send an accepted request again, as a client that missed the answer would."""
        external_id, body, base = self.sent[key]
        self.post(external_id, body, key=key, base=base)

    def post(
        self,
        external_id: str,
        body: dict[str, Any],
        *,
        method: str = "PUT",
        key: str | None = None,
        base: str | None = None,
        timeout: float = 60,
    ) -> str:
        """Post until accepted (retrying refused connections and 503 with the same key).

        ``base``: the ``X-Cdcsync-Base-Version`` (hex; "" for none), sent when given."""
        key = key or uuid.uuid4().hex
        data = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "X-Signature": sign(INBOUND_SECRET.encode(), data),
        }
        if base is not None:
            headers["X-Cdcsync-Base-Version"] = base
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self.http.request(
                    method,
                    f"{self.env.url}/inbound/crm/contact/{external_id}",
                    content=data,
                    headers=headers,
                )
                if response.status_code == 202:
                    self.accepted.append(key)
                    self.sent[key] = (external_id, body, base)
                    return key
                if response.status_code != 503:
                    raise AssertionError(
                        f"inbound answered {response.status_code}: {response.text}"
                    )
            except httpx.TransportError:
                pass  # cdcsync is (re)starting
            if time.monotonic() > deadline:
                raise AssertionError(f"inbound change {key} not accepted in {timeout}s")
            time.sleep(0.1)


def wait_for_endpoint(env: InboundEnv, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sync exited {proc.returncode}:\n{env.sync.sync_log()}")
        try:
            if httpx.get(env.url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no admin listener at {env.url}:\n{env.sync.sync_log()}")
