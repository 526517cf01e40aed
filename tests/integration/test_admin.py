"""The admin API of a running ``cdcsync run``: metrics, status, pause/resume, readiness,
health checks and graceful shutdown, against real servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cdc.demo.throwaway import free_port
from cdc.ops.console.session import MAX_WRONG_TOKENS
from tests.integration.harness import spawn_cdcsync, wait_while_running
from tests.integration.sync_harness import CRM_SECRET, SyncEnv, run_workload

TOKEN = "admin-token-for-tests"


class Running:
    """A ``cdcsync run`` process with its admin API on a known port."""

    def __init__(self, env: SyncEnv, *, token: str | None = TOKEN, **integration: Any) -> None:
        self.env = env
        self.port = free_port()
        self.token = token
        config = env.config()
        config["admin"] = {"listen": f"127.0.0.1:{self.port}", "probe_interval_s": 0.5}
        if token:
            config["admin"]["token"] = token
        for item in config["integrations"].values():
            item.update(integration)
        self.config_path = env.capture.workdir / "run.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = env.capture.workdir / "run.log"
        self.proc = spawn_cdcsync(
            "run", self.config_path, self.log_path, env={"CRM_SECRET": CRM_SECRET}
        )
        env.sync_procs.append(self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, *, token: str | None = None) -> httpx.Response:
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url + path, headers=headers, timeout=5)

    def status(self) -> dict[str, Any]:
        response = self.get("/status")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = self.get("/metrics")
        response.raise_for_status()
        values = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return values

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
        wait_while_running(self.proc, self.log, what, predicate, timeout=timeout)

    def wait_ready(self) -> None:
        self.wait_until("ready", lambda: self.get("/ready").status_code == 200)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cdc.cli", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "CRM_SECRET": CRM_SECRET},
        )


@pytest.fixture
def env(sync_env: SyncEnv) -> SyncEnv:
    return sync_env


def counter(values: dict[Any, float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_under_load(env: SyncEnv) -> None:
    running = Running(env)
    running.wait_ready()
    run_workload(env.dsn, customers=10, orders=20, seed=11)
    env.wait_converged()
    first = running.metrics()
    captured = counter(first, "cdcsync_captured_events_total", slot=env.capture.slot)
    assert captured > 0
    assert counter(first, "cdcsync_applied_total", integration="analytics") > 0
    assert counter(first, "cdcsync_applied_total", integration="crm") > 0
    assert counter(first, "cdcsync_circuit_state", integration="crm") == 0
    assert counter(first, "cdcsync_replication_connected", slot=env.capture.slot) == 1
    delivered = counter(
        first, "cdcsync_kafka_delivery_latency_seconds_count", slot=env.capture.slot
    )
    tombstones = counter(first, "cdcsync_captured_tombstones_total", slot=env.capture.slot)
    assert delivered == captured + tombstones

    run_workload(env.dsn, customers=5, orders=10, seed=12, id_base=1000)
    env.wait_converged()
    second = running.metrics()
    assert counter(second, "cdcsync_captured_events_total", slot=env.capture.slot) > captured
    assert counter(second, "cdcsync_applied_total", integration="analytics") > counter(
        first, "cdcsync_applied_total", integration="analytics"
    )


def test_the_token_guards_everything_but_health_and_readiness(env: SyncEnv) -> None:
    running = Running(env)
    running.wait_ready()
    assert httpx.get(running.url + "/health", timeout=5).status_code == 200
    assert httpx.get(running.url + "/ready", timeout=5).status_code == 200
    for path in ("/status", "/metrics"):
        assert httpx.get(running.url + path, timeout=5).status_code == 401
        assert running.get(path, token="wrong").status_code == 401
        assert running.get(path).status_code == 200
    refused = httpx.post(running.url + "/integrations/crm/pause", timeout=5)
    assert refused.status_code == 401
    assert running.status()["integrations"]["crm"]["paused"] is False
    # Neither the token nor the CRM's signing secret nor the DSN's password leaks.
    text = running.get("/status").text + running.get("/metrics").text + running.log()
    assert TOKEN not in text
    assert CRM_SECRET not in text


def test_pausing_one_integration_stops_it_while_the_other_continues(env: SyncEnv) -> None:
    running = Running(env)
    running.wait_ready()
    run_workload(env.dsn, customers=10, orders=30, seed=13)
    env.wait_converged()

    paused = running.cli("pause", "crm")
    assert paused.returncode == 0, paused.stderr
    assert "crm: paused" in paused.stdout
    assert running.status()["integrations"]["crm"]["paused"] is True
    crm_before = env.crm_contacts()
    analytics_applied = running.status()["integrations"]["analytics"]["applied"]
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("UPDATE customers SET email = 'paused-' || id || '@example.com'")
        conn.execute("UPDATE orders SET status = 'shipped'")
    running.wait_until(
        "analytics applied the updates",
        lambda: all(o[4] == "shipped" for o in env.analytics_orders().values()),
    )
    assert running.status()["integrations"]["analytics"]["applied"] > analytics_applied
    time.sleep(1.0)
    assert env.crm_contacts() == crm_before  # the paused integration wrote nothing

    resumed = running.cli("resume", "crm")
    assert resumed.returncode == 0, resumed.stderr
    env.wait_converged()
    assert all(c["email"].startswith("paused-") for c in env.crm_contacts().values())


def test_status_shows_the_running_processs_live_counters(env: SyncEnv, tmp_path: Path) -> None:
    running = Running(env)
    running.wait_ready()
    run_workload(env.dsn, customers=5, orders=10, seed=17)
    env.wait_converged()
    assert running.cli("pause", "crm").returncode == 0
    result = running.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["live_error"] is None
    live = document["live"]
    assert live["integrations"]["crm"]["paused"] is True
    assert live["integrations"]["analytics"]["applied"] > 0
    assert live["capture"]["connected"] is True
    human = running.cli("status")
    assert "paused yes" in human.stdout
    # The same config with a wrong token: status says the API refused it.
    config = yaml.safe_load(running.config_path.read_text())
    config["admin"]["token"] = "wrong-token"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(config))
    refused = subprocess.run(
        [sys.executable, "-m", "cdc.cli", "status", "--json", "--config", str(wrong)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "CRM_SECRET": CRM_SECRET},
    )
    assert "HTTP 401" in json.loads(refused.stdout)["live_error"]


def test_pausing_an_integration_that_does_not_run_is_a_clear_error(env: SyncEnv) -> None:
    running = Running(env)
    running.wait_ready()
    result = running.cli("pause", "nosuch")
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr
    assert "'nosuch' does not run in this process" in result.stderr


def test_a_failing_health_check_opens_the_circuit_before_any_record_fails(env: SyncEnv) -> None:
    running = Running(env, health_check_interval_s=0.3)
    running.wait_ready()
    run_workload(env.dsn, customers=3, orders=3, seed=14)
    env.wait_converged()
    writes_before = env.crm.store.stats().requests
    # The CRM's health endpoint (and any write) now fails.
    env.crm.store.set_faults(status=503, count=1_000_000)
    running.wait_until(
        "the crm circuit opened",
        lambda: running.status()["integrations"]["crm"]["circuit"] != "closed",
    )
    crm = running.status()["integrations"]["crm"]
    assert any(not check["ok"] for check in crm["checks"])
    assert crm["retried"] == 0  # no record was tried against the failing target
    assert env.crm.store.stats().requests == writes_before
    assert running.status()["integrations"]["analytics"]["circuit"] == "closed"

    env.crm.store.clear_faults()
    running.wait_until(
        "the crm circuit closed",
        lambda: running.status()["integrations"]["crm"]["circuit"] == "closed",
    )
    run_workload(env.dsn, customers=3, orders=3, seed=15, id_base=500)
    env.wait_converged()


def test_last_error_clears_once_the_circuit_closes_and_the_integration_applies_again(
    env: SyncEnv,
) -> None:
    running = Running(env)
    running.wait_ready()
    run_workload(env.dsn, customers=3, orders=3, seed=18)
    env.wait_converged()
    assert running.status()["integrations"]["crm"]["last_error"] is None

    env.crm.store.set_faults(status=503, count=1_000_000)
    run_workload(env.dsn, customers=3, orders=3, seed=19, id_base=600)
    running.wait_until(
        "the crm circuit opened with an error",
        lambda: (
            running.status()["integrations"]["crm"]["circuit"] != "closed"
            and running.status()["integrations"]["crm"]["last_error"] is not None
        ),
    )
    assert "503" in running.status()["integrations"]["crm"]["last_error"]

    env.crm.store.clear_faults()
    env.wait_converged()
    running.wait_until(
        "the crm circuit closed and its error cleared",
        lambda: (
            running.status()["integrations"]["crm"]["circuit"] == "closed"
            and running.status()["integrations"]["crm"]["last_error"] is None
        ),
        timeout=20,
    )
    human = running.cli("status")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("crm (group"))
    crm_live = next(line for line in lines[header:] if line.strip().startswith("live:"))
    assert "circuit closed" in crm_live
    assert crm_live.rstrip().endswith("last error -"), crm_live


def test_readiness_reports_an_unreachable_broker(
    pg_dsn: str, private_broker: Any, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = SyncEnv.create(
        pg_dsn=pg_dsn,
        bootstrap=private_broker.bootstrap,
        registry_url=registry_url,
        prefix=topic_prefix,
        workdir=tmp_path,
    )
    try:
        running = Running(env)
        running.wait_ready()
        private_broker.stop()
        running.wait_until(
            "readiness fails", lambda: running.get("/ready").status_code == 503, timeout=60
        )
        problems = running.get("/ready").json()["problems"]
        assert any(p.startswith("kafka: unreachable") for p in problems), problems
        assert running.get("/health").status_code == 200
    finally:
        env.stop()


def test_sigterm_drains_and_exits_cleanly(env: SyncEnv) -> None:
    running = Running(env)
    running.wait_ready()
    run_workload(env.dsn, customers=5, orders=10, seed=16)
    env.wait_converged()
    running.proc.send_signal(signal.SIGTERM)
    assert running.proc.wait(30) == 0, running.log()[-3000:]
    assert "stopping: draining in-flight work" in running.log()


def test_a_shutdown_that_cannot_drain_ends_at_the_timeout(
    pg_dsn: str, private_broker: Any, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = SyncEnv.create(
        pg_dsn=pg_dsn,
        bootstrap=private_broker.bootstrap,
        registry_url=registry_url,
        prefix=topic_prefix,
        workdir=tmp_path,
    )
    try:
        config = env.capture.config()
        config["process"] = {"shutdown_timeout_s": 2}
        path = tmp_path / "capture.yaml"
        path.write_text(yaml.safe_dump(config))
        log_path = tmp_path / "stuck.log"
        proc = spawn_cdcsync("capture", path, log_path)
        env.sync_procs.append(proc)
        env.capture.wait_for_slot()
        # The broker freezes with changes in flight: the drain cannot finish.
        private_broker.pause()
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO customers (id, name) SELECT g, 'x' FROM generate_series(1, 100) g"
            )
        time.sleep(1.0)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        elapsed = time.monotonic() - started
        log = log_path.read_text(errors="replace")
        assert code == 1, log[-3000:]
        assert "did not stop within 2s of the signal" in log
        assert elapsed < 15
    finally:
        private_broker.resume()
        env.stop()


def test_a_busy_admin_port_stops_the_command_with_a_clear_error(
    env: SyncEnv, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = env.capture.config()
        config["admin"] = {"listen": f"127.0.0.1:{port}"}
        path = tmp_path / "busy.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [sys.executable, "-m", "cdc.cli", "capture", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert f"admin.listen: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_past_the_wrong_token_limit_even_the_right_token_gets_429(env: SyncEnv) -> None:
    running = Running(env)
    running.wait_ready()
    assert running.get("/status").status_code == 200
    for _ in range(MAX_WRONG_TOKENS - 1):
        assert running.get("/status", token="not-the-token").status_code == 401
    # The wrong token that reaches the limit is answered 429 already.
    assert running.get("/status", token="not-the-token").status_code == 429
    refused = running.get("/status")  # the right token, from the same address
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    login = httpx.post(
        running.url + "/console/login", data={"token": TOKEN, "next": "/console/"}, timeout=5
    )
    assert login.status_code == 429
    assert "Too many wrong tokens from this address" in login.text
    assert running.get("/health").status_code == 200
