"""A Relation message's catalog look-ups: a lost connection restarts capture, never stops it."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from cdc.capture.pgoutput import Column, Relation
from cdc.capture.runtime import Capture
from cdc.capture.session import CaptureSession
from cdc.config import parse_config
from cdc.core.errors import RetryableError, SourceUnavailable

CONFIG = {
    "source": {"dsn": "postgresql://cdc@db/app", "tables": ["public.orders"]},
    "kafka": {"bootstrap_servers": "localhost:9092", "topic_prefix": "app"},
    "registry": {"url": "http://localhost:8081"},
}


class RestartedServer:
    """A catalog connection whose server was restarted under it."""

    async def execute(self, *_args: Any, **_kwargs: Any) -> Any:
        raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")


@pytest.mark.parametrize("identity", ["d", "f"])
def test_a_catalog_connection_lost_at_a_relation_message_is_a_retryable_source_outage(
    identity: str,
) -> None:
    session = CaptureSession(Capture(parse_config(CONFIG)), "app")
    session.catalog = RestartedServer()
    columns = (Column(True, "id", 23, -1), Column(False, "n", 25, -1))
    relation = Relation(16384, "public", "orders", identity, columns)
    with pytest.raises(SourceUnavailable, match=r"public\.orders") as raised:
        asyncio.run(session.on_relation(relation))
    assert isinstance(raised.value, RetryableError)
