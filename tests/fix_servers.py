"""Shared policy of the server fixtures: in CI a server that cannot start fails the run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(what: str, why: object) -> NoReturn:
    """Fail (CI, or CDCSYNC_TEST_REQUIRE_SERVERS=1) or skip when a test server is missing."""
    message = f"{what} unavailable: {why}"
    if os.environ.get("CI") or os.environ.get("CDCSYNC_TEST_REQUIRE_SERVERS"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
