"""``registry.url: sqlite:///PATH``: capture, sync and run each embed the registry on one file."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import yaml

from schema_registry.client import RegistryClient
from tests.integration.harness import spawn_cdcsync
from tests.integration.sync_harness import CRM_SECRET, SyncEnv, run_workload


@pytest.fixture
def registry_url(tmp_path: Path) -> str:
    """Overrides the shared registry server: every process here embeds one on this file."""
    return f"sqlite:///{tmp_path / 'registry.db'}"


def _alive(env: SyncEnv) -> None:
    for proc in [*env.sync_procs, *env.capture.procs]:
        code = proc.poll()
        assert code in (None, 0, -signal.SIGKILL), (
            f"a cdcsync process exited {code}:\n{env.sync_log()[-3000:]}\n"
            f"{env.capture.log_text()[-3000:]}"
        )


def _subjects(url: str) -> list[str]:
    async def read() -> list[str]:
        async with RegistryClient.from_url(url) as client:
            return sorted(await client.subjects())

    return asyncio.run(read())


def test_capture_and_sync_as_separate_commands_share_an_embedded_registry_file(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    env.capture.start()
    env.capture.wait_for_slot()
    env.start_sync()
    run_workload(env.dsn, customers=15, orders=40, seed=11)
    env.wait_converged(check=lambda: _alive(env))
    prefix = env.capture.prefix
    assert _subjects(env.capture.registry_url) == sorted(
        f"{prefix}.public.{table}-{part}"
        for table in ("customers", "orders")
        for part in ("key", "value")
    )


def test_run_with_an_embedded_registry_applies_changes(sync_env: SyncEnv) -> None:
    env = sync_env
    path = env.capture.workdir / "run.yaml"
    path.write_text(yaml.safe_dump(env.config()))
    log = env.capture.workdir / "sync.log"
    env.sync_procs.append(spawn_cdcsync("run", path, log, env={"CRM_SECRET": CRM_SECRET}))
    env.capture.wait_for_slot()
    run_workload(env.dsn, customers=10, orders=30, seed=12)
    env.wait_converged(check=lambda: _alive(env))
    # The file holds what run registered.
    assert f"{env.capture.prefix}.public.customers-value" in _subjects(env.capture.registry_url)
