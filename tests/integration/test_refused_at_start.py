"""A server that refuses for good stops ``cdcsync run`` at once, before the slot exists.

Each refusal is injected for real: a PostgreSQL cluster of the test's own that asks the
role ``pwuser`` for a password (scram-sha-256) and is given a wrong one, a database and a
role that do not exist, a port where no broker listens, and the project's registry with
basic auth given wrong credentials. Each time the command exits with the code the README
documents, says why in one line naming the server (never the password), and leaves no
replication slot and no publication behind.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from confluent_kafka import Producer

from cdc.config import parse_config
from cdc.core.errors import RegistryRefused
from cdc.demo.throwaway import LocalPostgres, LocalRegistry, free_port
from cdc.kafka.client_log import BURST
from cdc.sync.runtime import Sync

PASSWORD = "right-Pa55word"
WRONG = "wrong-Pa55word"


@pytest.fixture(scope="module")
def password_pg() -> Iterator[LocalPostgres]:
    """A cluster where ``pwuser`` (a superuser) must give its password; database ``app``."""
    server = LocalPostgres().start()
    try:
        assert server.datadir is not None
        hba = server.datadir / "data" / "pg_hba.conf"
        hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
            conn.execute("CREATE DATABASE app OWNER pwuser")
            conn.execute("SELECT pg_reload_conf()")
        with psycopg.connect(server.dsn_for("app"), autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        yield server
    finally:
        server.stop()


@dataclass
class Start:
    server: LocalPostgres
    bootstrap: str
    registry_url: str
    workdir: Path
    slot: str = ""
    publication: str = ""

    def __post_init__(self) -> None:
        self.slot = f"s_{uuid.uuid4().hex[:8]}"
        self.publication = f"p_{uuid.uuid4().hex[:8]}"

    def dsn(self, *, user: str = "pwuser", password: str = PASSWORD, db: str = "app") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.server.port}/{db}"

    def config(self, **overrides: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "source": {
                "dsn": self.dsn(),
                "slot": self.slot,
                "publication": self.publication,
                "tables": ["public.items"],
            },
            "kafka": {"bootstrap_servers": self.bootstrap, "topic_prefix": "refused"},
            "registry": {"url": self.registry_url},
            "admin": {"listen": "127.0.0.1:0"},
            "logging": {"format": "json"},
            "integrations": {
                "items": {
                    "topics": ["refused.public.items"],
                    "mapper": {"entity": "Item", "key": "id", "fields": {"name": "name"}},
                    "sink": {"type": "kafka", "topic": "refused.entities.items"},
                }
            },
        }
        for section, values in overrides.items():
            config[section] = {**config[section], **values}
        return config

    def run(self, **overrides: Any) -> subprocess.CompletedProcess[str]:
        path = self.workdir / "cdcsync.yaml"
        path.write_text(yaml.safe_dump(self.config(**overrides)))
        return subprocess.run(
            [sys.executable, "-m", "cdc.cli", "run", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Replication slots of this test's name (any database) and publications in ``app``."""
        with psycopg.connect(self.server.dsn_for("app"), autocommit=True) as conn:
            slots = conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
            ).fetchall()
            pubs = conn.execute(
                "SELECT pubname FROM pg_publication WHERE pubname = %s", (self.publication,)
            ).fetchall()
        return [r[0] for r in slots], [r[0] for r in pubs]


@pytest.fixture
def start(
    password_pg: LocalPostgres, kafka_bootstrap: str, registry_url: str, tmp_path: Path
) -> Start:
    return Start(password_pg, kafka_bootstrap, registry_url, tmp_path)


def refusal_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command's one line of refusal (the last on stderr); every other line is a log
    record in the configured JSON format."""
    assert result.returncode == code, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines, "nothing said"
    *records, last = lines
    assert last.startswith("cdcsync: "), result.stderr[-3000:]
    for line in records:
        json.loads(line)  # a formatted record, never a raw library line
    assert "Traceback" not in result.stderr
    return last


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ({"password": WRONG}, 'password authentication failed for user "pwuser"'),
        ({"db": "nodb"}, 'database "nodb" does not exist'),
        ({"user": "nobody"}, 'role "nobody" does not exist'),
    ],
    ids=["wrong-password", "unknown-database", "unknown-role"],
)
def test_a_source_refusing_the_connection_exits_3_naming_why_before_any_slot(
    start: Start, dsn: dict[str, str], reason: str
) -> None:
    result = start.run(source={"dsn": start.dsn(**dsn)})
    line = refusal_line(result, 3)
    assert "refuses the connection" in line and reason in line
    assert f"127.0.0.1:{start.server.port}" in line
    assert WRONG not in result.stderr and PASSWORD not in result.stderr
    assert start.leftovers() == ([], [])


def test_no_broker_at_start_exits_4_before_any_slot_with_librdkafka_lines_formatted_and_bounded(
    start: Start,
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    result = start.run(kafka={"bootstrap_servers": bootstrap})
    line = refusal_line(result, 4)
    assert f"Kafka at {bootstrap} did not answer" in line
    assert start.leftovers() == ([], [])
    # librdkafka retried its connection every ~50 ms for 10 s, a line each time, yet its
    # lines came as JSON records, at most BURST per kind.
    records = [json.loads(x) for x in result.stderr.strip().splitlines()[:-1]]
    librdkafka = [r for r in records if r["logger"] == "cdcsync.librdkafka"]
    assert librdkafka, "librdkafka's lines did not reach the log"
    kinds = {(r["level"], r["message"].split(" ", 1)[0]) for r in librdkafka}
    assert len(librdkafka) <= BURST * len(kinds) <= 4 * BURST, librdkafka


def test_a_registry_refusing_the_credentials_exits_5_before_any_slot(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDCSYNC_TEST_REGISTRY_AUTH", f"cdc:{PASSWORD}")
    registry = LocalRegistry(extra_args=("--basic-auth-env", "CDCSYNC_TEST_REGISTRY_AUTH"))
    registry.start()
    try:
        result = start.run(registry={"url": registry.url, "username": "cdc", "password": WRONG})
    finally:
        registry.stop()
    line = refusal_line(result, 5)
    assert f"schema registry {registry.url} refuses the credentials (HTTP 401)" in line
    assert WRONG not in result.stderr
    assert start.leftovers() == ([], [])


def test_the_right_credentials_pass_the_start_checks(start: Start) -> None:
    """The control: the same cluster and role with the password it asks for get past the
    checks and create the slot (the command is stopped once they exist)."""
    path = start.workdir / "ok.yaml"
    path.write_text(yaml.safe_dump(start.config()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc.cli", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while start.leftovers()[0] == [] and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        assert start.leftovers() == ([start.slot], [start.publication])
    finally:
        proc.terminate()
        proc.wait(30)
        with psycopg.connect(start.server.dsn_for("app"), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL",
                (start.slot,),
            )
            for _ in range(100):
                active = conn.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (start.slot,)
                ).fetchone()
                if active is None or not active[0]:
                    break
                time.sleep(0.1)
            conn.execute("SELECT pg_drop_replication_slot(%s)", (start.slot,))


def test_a_source_that_is_down_is_retried_with_the_reason_in_ready_and_status(
    start: Start,
) -> None:
    """Unreachable is not refused: capture keeps retrying and says why in the log, /ready
    and /status (a closed port: PostgreSQL restarting looks the same)."""
    down = f"postgresql://pwuser:{PASSWORD}@127.0.0.1:{free_port()}/app"
    admin = free_port()
    config = start.config(source={"dsn": down}, admin={"listen": f"127.0.0.1:{admin}"})
    path = start.workdir / "down.yaml"
    path.write_text(yaml.safe_dump(config))
    log = start.workdir / "capture.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc.cli", "capture", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        ready: dict[str, Any] = {}
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                ready = httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=2).json()
                status = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=2).json()
            except httpx.HTTPError:
                pass
            if status.get("capture", {}).get("restarts", 0) >= 2:
                break
            time.sleep(0.2)
        assert not ready["ready"]
        reason = "cannot connect to postgresql://pwuser:***@127.0.0.1"
        assert any("capture is not streaming" in p and reason in p for p in ready["problems"])
        assert reason in status["capture"]["last_error"]
        assert "capture interrupted (" + reason in log.read_text()
        assert PASSWORD not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_registry_refusing_the_credentials_while_running_stops_sync_and_dead_letters_nothing(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the start checks (credentials changed on the registry while sync runs), every
    record's schema look-up is refused: sync stops with ``RegistryRefused`` (exit 5) instead
    of dead-lettering each record as undecodable."""
    monkeypatch.setenv("CDCSYNC_TEST_REGISTRY_AUTH", f"cdc:{PASSWORD}")
    registry = LocalRegistry(extra_args=("--basic-auth-env", "CDCSYNC_TEST_REGISTRY_AUTH"))
    registry.start()
    topic = f"{topic_prefix}.public.items"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for n in range(3):  # Confluent framing: magic byte 0, schema id 1, then the Avro body
        producer.produce(topic, value=b"\x00\x00\x00\x00\x01" + bytes([n]), key=str(n).encode())
    assert producer.flush(30) == 0
    config = parse_config(
        {
            "source": {"dsn": pg_dsn, "tables": ["public.items"]},
            # tansu holds a group join for part of the session timeout (about 23 s of the
            # default 45 s, twice on a rejoin): a short one keeps the 60 s budget for the test.
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "topic_prefix": topic_prefix,
                "properties": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 600},
            },
            "registry": {"url": registry.url, "username": "cdc", "password": WRONG},
            "admin": {"enabled": False},
            "integrations": {
                "items": {
                    "topics": [topic],
                    "mapper": {"entity": "Item", "key": "id", "fields": {"name": "name"}},
                    "sink": {"type": "kafka", "topic": f"{topic_prefix}.entities.items"},
                }
            },
        },
        env={},
    )

    async def run_sync() -> BaseException | None:
        stop = asyncio.Event()
        try:
            await asyncio.wait_for(Sync(config).run(stop), 60)
        except Exception as exc:
            return exc
        return None

    try:
        error = asyncio.run(run_sync())
    finally:
        registry.stop()
    assert isinstance(error, RegistryRefused), error
    assert error.exit_code == 5 and "HTTP 401" in str(error)
    with psycopg.connect(pg_dsn) as conn:
        letters = conn.execute("SELECT count(*) FROM cdcsync.dead_letters").fetchone()
    assert letters == (0,)
