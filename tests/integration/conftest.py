"""Fixtures shared by the sync-side integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sync_harness import SyncEnv


@pytest.fixture
def sync_env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[SyncEnv]:
    """The sample schema, a capture environment and a test CRM; everything stopped after."""
    env = SyncEnv.create(
        pg_dsn=pg_dsn,
        bootstrap=kafka_bootstrap,
        registry_url=registry_url,
        prefix=topic_prefix,
        workdir=tmp_path,
    )
    try:
        yield env
    finally:
        env.stop()
