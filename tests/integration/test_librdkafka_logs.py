"""librdkafka's lines during a broker outage: log records in the configured format, bounded.

(The admin listener's HTTP server, sent a request it cannot parse, logs in that format too.)

``cdcsync run`` (capture, a sync worker, the admin API's probes: several Kafka clients)
streams against a broker of the test's own, which is then stopped for real. Every client
retries its connection every few tens of milliseconds and librdkafka writes a line per
attempt; before they went through Python logging that was ~80 raw ``%3|...|rdkafka#...``
lines a second on stderr, also with ``logging.format: json``.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import yaml

from cdc.demo.throwaway import LocalBroker
from cdc.kafka.client_log import BURST
from tests.integration.harness import slot_streaming

OUTAGE_S = 8.0


def test_a_broker_outage_logs_librdkafka_as_json_records_a_bounded_number_of_times(
    pg_dsn: str, private_broker: LocalBroker, registry_url: str, tmp_path: Path
) -> None:
    slot = f"s_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    config = {
        "source": {
            "dsn": pg_dsn,
            "slot": slot,
            "publication": f"p_{uuid.uuid4().hex[:8]}",
            "tables": ["public.items"],
        },
        "kafka": {"bootstrap_servers": private_broker.bootstrap, "topic_prefix": "outage"},
        "registry": {"url": registry_url},
        "admin": {"listen": "127.0.0.1:0", "probe_interval_s": 1},
        "logging": {"format": "json"},
        "process": {"shutdown_timeout_s": 5},
        "integrations": {
            "items": {
                "topics": ["outage.public.items"],
                "mapper": {"entity": "Item", "key": "id", "fields": {"name": "name"}},
                "sink": {"type": "kafka", "topic": "outage.entities.items"},
            }
        },
    }
    path = tmp_path / "cdcsync.yaml"
    path.write_text(yaml.safe_dump(config))
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc.cli", "run", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, stderr.read_text()
            with psycopg.connect(pg_dsn) as conn:
                if slot_streaming(conn, slot):
                    break
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.2)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1, 'before the outage')")
        # The admin listener's HTTP server logs too: a request it cannot parse.
        found = re.search(r"admin API on http://127\.0\.0\.1:(\d+)", stderr.read_text())
        assert found, stderr.read_text()
        with socket.create_connection(("127.0.0.1", int(found[1])), timeout=5) as garbage:
            garbage.sendall(b"\x16\x03\x01 not HTTP\r\n\r\n")
            garbage.recv(1024)
        private_broker.stop()
        time.sleep(OUTAGE_S)  # the outage itself: what is logged during it is the subject
        assert proc.poll() is None, "a broker outage is waited out, not fatal"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = stderr.read_text().strip().splitlines()
    records = [json.loads(line) for line in lines]  # nothing raw, nothing else
    assert any(r["logger"].startswith("uvicorn") for r in records), lines
    librdkafka = [r for r in records if r["logger"] == "cdcsync.librdkafka"]
    assert librdkafka, "librdkafka's lines did not reach the log"
    kinds = {(r["level"], r["message"].split(" ", 1)[0]) for r in librdkafka}
    # At most BURST lines of a kind per minute, and only a handful of kinds (FAIL, ERROR...).
    assert len(librdkafka) <= BURST * len(kinds) <= 6 * BURST, librdkafka
    assert len(records) < 200, lines[-20:]
