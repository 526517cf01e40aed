"""Kafka fixtures: the embedded tansu broker (free port) or CDCSYNC_TEST_KAFKA.

``kafka_bootstrap`` is one broker per session; ``private_broker`` is a broker
of the test's own, for tests that pause or kill it. ``topic_prefix`` is unique
per test so tests never see each other's topics.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from cdc.demo.throwaway import EmbeddedServerError, LocalBroker
from tests.fix_servers import unavailable


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("CDCSYNC_TEST_KAFKA")
    if external:
        yield external
        return
    try:
        broker = LocalBroker().start()
    except EmbeddedServerError as exc:
        unavailable("Kafka broker", exc)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def private_broker() -> Iterator[LocalBroker]:
    """A broker only this test uses, so it may pause, stop or restart it."""
    try:
        broker = LocalBroker().start()
    except EmbeddedServerError as exc:
        unavailable("Kafka broker", exc)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
