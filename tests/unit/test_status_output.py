"""What operators read from ``cdcsync status`` and ``GET /status``: words and numbers,
never Python reprs or strings standing in for numbers."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from cdc.config import parse_config
from cdc.ops.admin_api import AdminApi
from cdc.ops.status import print_status
from cdc.sync.worker import IntegrationStats

CONFIG = {
    "source": {"dsn": "postgresql://cdc@db:5432/app", "tables": ["public.customers"]},
    "kafka": {"bootstrap_servers": "localhost:9092", "topic_prefix": "app"},
    "registry": {"url": "http://localhost:8081"},
}


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _get_status(api: AdminApi) -> Any:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            return await client.get("/status")

    response = asyncio.run(call())
    assert response.status_code == 200, response.text
    return _strict_json(response.text)


def test_status_json_gives_a_p99_past_the_largest_bucket_as_a_number() -> None:
    stats = IntegrationStats()
    for _ in range(10):
        stats.apply_latency.observe_us(30_000_000)  # 30 s: past the largest bucket (10 s)
    worker = SimpleNamespace(stats=stats, group_id="cdcsync.crm")
    sync: Any = SimpleNamespace(workers={"crm": worker}, inbound_workers={})
    api = AdminApi(parse_config(CONFIG), sync=sync)

    crm = _get_status(api)["integrations"]["crm"]

    assert isinstance(crm["apply_latency_p99_s"], float)
    assert crm["apply_latency_p99_s"] == 30.0  # the largest latency seen: an upper bound


def test_status_json_gives_null_p99_before_anything_was_applied() -> None:
    worker = SimpleNamespace(stats=IntegrationStats(), group_id="cdcsync.crm")
    sync: Any = SimpleNamespace(workers={"crm": worker}, inbound_workers={})
    api = AdminApi(parse_config(CONFIG), sync=sync)
    assert _get_status(api)["integrations"]["crm"]["apply_latency_p99_s"] is None


LIVE_CAPTURE = {
    "slot": "cdcsync",
    "connected": True,
    "events": 13963,
    "transactions": 120,
    "tombstones": 747,
    "restarts": 0,
    "skipped_transactions": 0,
    "flushed_lsn": "0/16B3F00",
    "received_lsn": "0/16B3F00",
    "lag_bytes": 0,
    "lag_seconds": None,
    "retained_wal_bytes": None,
    "delivery_latency_p99_s": 0.01,
    "last_error": None,
    "uptime_s": 12.5,
}


def test_status_prints_the_live_counters_as_words_and_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = {
        "capture": {"slot": "cdcsync", "exists": False, "error": None, "snapshots": []},
        "integrations": {
            "crm": {
                "group_id": "cdcsync.crm",
                "partitions": [],
                "lag": 0,
                "error": None,
                "dead_letters": {"pending": 0, "replayed": 0},
            }
        },
        "live": {
            "capture": LIVE_CAPTURE,
            "integrations": {
                "crm": {
                    "applied": 1200,
                    "older": 0,
                    "duplicate": 3,
                    "retried": 0,
                    "dead_lettered": 0,
                    "circuit": "closed",
                    "paused": False,
                    "last_version": None,
                    "last_error": None,
                    "apply_latency_p99_s": 0.25,
                }
            },
        },
        "live_error": None,
    }
    print_status(status)
    out = capsys.readouterr().out
    capture_line = next(line for line in out.splitlines() if line.startswith("live capture:"))
    assert "{" not in capture_line
    assert "connected yes" in capture_line
    assert "events 13,963" in capture_line
    assert "tombstones 747" in capture_line
    assert "confirmed 0/16B3F00" in capture_line
    assert "delivery p99 0.010 s" in capture_line
    assert "last error -" in capture_line
    crm_line = next(line for line in out.splitlines() if line.strip().startswith("live:"))
    assert "applied 1,200" in crm_line
    assert "paused no" in crm_line
    assert "last version -" in crm_line
    assert "apply p99 0.250 s" in crm_line
    for python_word in ("True", "False", "None"):
        assert python_word not in out
