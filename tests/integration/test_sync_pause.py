"""Pausing an integration at the worst moment: while its consumer is fetching a batch.

The batch fetched across the pause must wait for the resume: nothing reaches the
paused integration's target, and nothing of that batch is lost once it resumes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Message

import cdc.kafka.consumer
from cdc.config import parse_config
from cdc.sync.runtime import Sync
from tests.integration.sync_harness import CRM_SECRET, SyncEnv, run_workload


@pytest.fixture
def env(sync_env: SyncEnv) -> SyncEnv:
    return sync_env


async def _until(what: str, done: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


def test_a_batch_fetched_while_pausing_waits_for_the_resume_and_is_then_applied(
    env: SyncEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.capture.start()
    env.capture.wait_for_slot()
    config = parse_config(env.config(), env={"CRM_SECRET": CRM_SECRET})

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sync = Sync(config, only=["crm"])
        paused_during_fetch = threading.Event()
        fetch = cdc.kafka.consumer.next_batch

        def fetch_then_pause(consumer: Consumer, size: int) -> list[Message]:
            msgs = fetch(consumer, size)
            if msgs and not paused_during_fetch.is_set():
                # The pause request arrives after the records are fetched, before apply.
                applied = threading.Event()
                loop.call_soon_threadsafe(lambda: (sync.pause("crm"), applied.set()))
                applied.wait(10)
                paused_during_fetch.set()
            return msgs

        monkeypatch.setattr(cdc.kafka.consumer, "next_batch", fetch_then_pause)
        stop = asyncio.Event()
        task = asyncio.create_task(sync.run(stop))
        try:
            await asyncio.to_thread(run_workload, env.dsn, customers=8, orders=0, seed=5)
            await _until("a batch was fetched across the pause", paused_during_fetch.is_set)
            await asyncio.sleep(1.5)
            assert env.crm_contacts() == {}, "the paused integration wrote to its target"
            assert sync.workers["crm"].stats.paused
            sync.resume("crm")
            await _until(
                "the CRM holds every customer",
                lambda: env.crm_contacts() == env.source_customers(),
            )
        finally:
            stop.set()
            await task

    asyncio.run(scenario())
