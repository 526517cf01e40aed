"""Replay end to end: a target built by a live run is left exactly as it was by replays."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.sync_harness import CRM_SECRET, SyncEnv, live_env, run_workload


@dataclass
class Built:
    env: SyncEnv
    config_path: Path
    middle: datetime


@pytest.fixture(scope="module")
def built(
    pg_server: Any, kafka_bootstrap: str, registry_url: str, tmp_path_factory: Any
) -> Iterator[Built]:
    """Both targets built by a live run of two workloads; the live sync keeps running."""
    with live_env(pg_server, kafka_bootstrap, registry_url, tmp_path_factory) as env:
        run_workload(env.dsn, customers=20, orders=60, seed=11)
        env.wait_converged()
        time.sleep(1.5)
        middle = datetime.now(UTC)
        time.sleep(0.5)
        run_workload(env.dsn, customers=10, orders=30, seed=12, id_base=1000)
        env.wait_converged()
        path = env.capture.workdir / "replay.yaml"
        env.write_config(path)
        yield Built(env, path, middle)


def cdcsync(built: Built, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *args[:1], "--config", str(built.config_path), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_environ(), "CRM_SECRET": CRM_SECRET},
        check=False,
    )


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def replay(built: Built, name: str, *args: str) -> dict[str, Any]:
    done = cdcsync(built, "replay", name, "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def snapshot(env: SyncEnv) -> tuple[Any, ...]:
    return env.crm_contacts(), env.analytics_orders(), env.crm.store.stats().applied


def committed(env: SyncEnv, name: str) -> dict[tuple[str, int], int]:
    integration = env.config()["integrations"][name]
    consumer = Consumer(
        {"bootstrap.servers": env.capture.bootstrap, "group.id": integration["group_id"]}
    )
    try:
        tps = [TopicPartition(t, 0) for t in integration["topics"]]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def end_offset(env: SyncEnv, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": env.capture.bootstrap, "group.id": "probe"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        consumer.close()


def assert_nothing_new(summary: dict[str, Any]) -> None:
    assert summary["applied"] == 0
    assert summary["records"] == sum(r["end"] - r["start"] for r in summary["ranges"])
    assert summary["records"] > 0
    assert summary["duplicate"] + summary["older"] > 0
    assert summary["dead_lettered"] == 0
    # Every record is accounted for once, tombstones included.
    parts = ("with_operations", "tombstones", "no_operation", "echo", "dead_lettered")
    assert sum(summary[part] for part in parts) == summary["records"]
    # The example mappers make one operation of each record that has one.
    assert summary["duplicate"] + summary["older"] == summary["with_operations"]


@pytest.mark.parametrize("name", ["analytics", "crm"])
def test_replaying_from_the_beginning_leaves_the_target_as_it_was(built: Built, name: str) -> None:
    before = snapshot(built.env)
    offsets = committed(built.env, name)
    summary = replay(built, name, "--from-beginning")
    assert_nothing_new(summary)
    assert snapshot(built.env) == before
    # The live group's committed offsets did not move.
    assert committed(built.env, name) == offsets


def test_replaying_from_a_middle_offset_changes_nothing(built: Built) -> None:
    topic = built.env.capture.topic("public.orders")
    middle = end_offset(built.env, topic) // 2
    before = snapshot(built.env)
    summary = replay(built, "analytics", "--from-offset", f"{topic}:0:{middle}")
    assert_nothing_new(summary)
    assert summary["ranges"][0]["start"] == middle
    assert snapshot(built.env) == before


def test_replaying_from_a_timestamp_replays_only_the_later_events(built: Built) -> None:
    before = snapshot(built.env)
    everything = replay(built, "analytics", "--from-beginning", "--dry-run")
    summary = replay(built, "analytics", "--from-timestamp", built.middle.isoformat())
    assert_nothing_new(summary)
    assert 0 < summary["records"] < everything["records"]
    assert snapshot(built.env) == before


def test_a_replay_until_an_offset_stops_there(built: Built) -> None:
    topic = built.env.capture.topic("public.customers")
    summary = replay(
        built, "crm", "--from-offset", f"{topic}:0:3", "--until-offset", f"{topic}:0:9"
    )
    assert summary["records"] == 6
    assert summary["applied"] == 0
    # Without --json, a summary for people (no progress bar: stderr is not a terminal).
    human = cdcsync(
        built, "replay", "crm", "--from-offset", f"{topic}:0:3", "--until-offset", f"{topic}:0:9"
    )
    assert human.returncode == 0, human.stderr
    assert "replay of crm: 6 records" in human.stdout
    assert f"{topic}[0] offsets 3..9" in human.stdout
    assert "applied 0," in human.stdout


def test_the_replay_summary_counts_tombstones_so_its_records_add_up(built: Built) -> None:
    """Deleted orders left tombstones in Kafka: the summary says so, in both forms."""
    summary = replay(built, "analytics", "--from-beginning")
    assert summary["tombstones"] > 0
    assert (
        summary["with_operations"]
        + summary["tombstones"]
        + summary["no_operation"]
        + summary["echo"]
        + summary["dead_lettered"]
        == summary["records"]
    )
    human = cdcsync(built, "replay", "analytics", "--from-beginning")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == f"replay of analytics: {summary['records']:,} records"
    (records_line,) = [line for line in lines if line.strip().startswith("records:")]
    numbers = [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", records_line)]
    assert sum(numbers) == summary["records"], records_line
    assert f"{summary['tombstones']:,} tombstones" in records_line
    (operations_line,) = [line for line in lines if line.strip().startswith("operations:")]
    assert operations_line.strip() == (
        f"operations: applied 0, older {summary['older']:,}, duplicate {summary['duplicate']:,}"
    )


def test_on_a_terminal_a_progress_bar_shows_how_far_the_replay_is(built: Built) -> None:
    command = " ".join(
        shlex.quote(part)
        for part in (
            sys.executable,
            "-m",
            "cdc.cli",
            "replay",
            "--config",
            str(built.config_path),
            "analytics",
            "--from-beginning",
        )
    )
    done = subprocess.run(
        ["script", "-qefc", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_environ(), "CRM_SECRET": CRM_SECRET, "COLUMNS": "160"},
        check=False,
    )
    assert done.returncode == 0, done.stdout
    assert "replay analytics" in done.stdout
    assert "ETA" in done.stdout
    assert "100%" in done.stdout
    quiet = cdcsync(built, "replay", "analytics", "--from-beginning", "--quiet")
    assert "ETA" not in quiet.stderr + quiet.stdout


def test_a_dry_run_counts_what_would_be_sent_and_changes_nothing(built: Built) -> None:
    before = snapshot(built.env)
    summary = replay(built, "crm", "--from-beginning", "--dry-run")
    assert summary["dry_run"] is True
    assert summary["would_send"] > 0
    assert summary["applied"] == summary["duplicate"] == summary["older"] == 0
    assert snapshot(built.env) == before


def _bad_requests(env: SyncEnv) -> list[tuple[list[str], str]]:
    customers = env.capture.topic("public.customers")
    orders = env.capture.topic("public.orders")
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    return [
        (["nope", "--from-beginning"], "unknown integration 'nope'"),
        (["crm", "--from-offset", "customers-0-5"], "is not TOPIC:PARTITION:OFFSET"),
        (["crm", "--from-offset", f"{orders}:0:0"], "is not one of integration 'crm'"),
        (["crm", "--from-offset", f"{customers}:7:0"], "has no partition 7"),
        (["crm", "--from-offset", f"{customers}:0:99999"], "outside the retained range"),
        (["crm", "--from-timestamp", future], "after the newest retained event"),
        (["crm", "--from-timestamp", "yesterday"], "is not an ISO-8601 time"),
        (["crm"], "exactly one of --from-beginning"),
        (["crm", "--from-beginning", "--from-timestamp", future], "exactly one of"),
        (
            ["crm", "--from-offset", f"{customers}:0:5", "--until-offset", f"{customers}:0:2"],
            "must lie between the start 5",
        ),
    ]


def test_bad_requests_are_refused_clearly_and_move_nothing(built: Built) -> None:
    before = snapshot(built.env)
    offsets = {name: committed(built.env, name) for name in ("crm", "analytics")}
    for args, message in _bad_requests(built.env):
        done = cdcsync(built, "replay", *args)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert snapshot(built.env) == before
    assert {name: committed(built.env, name) for name in offsets} == offsets


def test_a_replay_next_to_the_live_integration_under_writes_leaves_both_targets_right(
    built: Built,
) -> None:
    # Runs last: it adds rows. The live sync is not paused while the replay runs.
    writer = threading.Thread(
        target=run_workload,
        args=(built.env.dsn,),
        kwargs={"customers": 10, "orders": 40, "seed": 13, "id_base": 2000},
    )
    writer.start()
    for name in ("crm", "analytics"):
        summary = replay(built, name, "--from-beginning", "--quiet")
        assert summary["dead_lettered"] == 0
    writer.join()
    built.env.wait_converged()
