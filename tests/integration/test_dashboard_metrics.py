"""The Grafana dashboard's queries against the /metrics of a real ``cdcsync run`` under load."""

from __future__ import annotations

import time

import httpx
import yaml

from tests.integration.harness import spawn_cdcsync
from tests.integration.inbound_harness import INBOUND_SECRET, InboundEnv
from tests.integration.sync_harness import CRM_SECRET, SyncEnv, run_workload
from tests.unit.test_grafana_dashboard import dashboard_problems, names_in


def test_every_dashboard_query_uses_what_a_running_process_serves_on_metrics(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    inbound = InboundEnv.create(env)  # the CRM also writes back: inbound metrics appear
    port = inbound.port
    config = inbound.config()
    # Heartbeats and the slot watch make the lag-in-seconds and retained-WAL gauges appear.
    config["source"].update(heartbeat_interval_s=0.5, slot_lag_warn_bytes=1 << 30)
    config["admin"] = {"listen": f"127.0.0.1:{port}"}
    path = env.capture.workdir / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    log = env.capture.workdir / "sync.log"
    env.sync_procs.append(
        spawn_cdcsync(
            "run", path, log, env={"CRM_SECRET": CRM_SECRET, "CRM_INBOUND_SECRET": INBOUND_SECRET}
        )
    )
    env.capture.wait_for_slot()
    run_workload(env.dsn, customers=5, orders=10, seed=21)
    env.wait_converged()

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    deadline = time.monotonic() + 30
    text = scrape()
    while time.monotonic() < deadline and not (
        "cdcsync_replication_lag_seconds" in text and "cdcsync_slot_retained" in text
    ):
        time.sleep(0.2)  # polling for the first heartbeat's round trip
        text = scrape()
    assert dashboard_problems(*names_in(text)) == []
