"""Schema registry fixtures: this project's registry server on a free port.

``registry_url`` is shared by the session (tests use unique subject names);
``fresh_registry_url`` is a server of the test's own, for tests that change
global config or mode. CDCSYNC_TEST_REGISTRY_URL points the shared one elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cdc.demo.throwaway import EmbeddedServerError, LocalRegistry
from tests.fix_servers import unavailable


def _start(**kwargs: object) -> LocalRegistry:
    try:
        return LocalRegistry(**kwargs).start()  # type: ignore[arg-type]
    except EmbeddedServerError as exc:
        unavailable("schema registry", exc)


@pytest.fixture(scope="session")
def registry_url() -> Iterator[str]:
    external = os.environ.get("CDCSYNC_TEST_REGISTRY_URL")
    if external:
        yield external
        return
    server = _start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fresh_registry_url() -> Iterator[str]:
    server = _start()
    try:
        yield server.url
    finally:
        server.stop()
