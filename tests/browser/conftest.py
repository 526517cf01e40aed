"""Fixtures of the console's browser tests: one ``cdcsync run`` and one Chromium per module,
a fresh browser context per test that fails the test on any console error.

Playwright's synchronous API keeps an event loop marked running in this thread while it is
started, which makes ``asyncio.run`` in later tests fail: it is started and stopped per
module, never for the whole session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright
from psycopg import sql

from tests.browser.console_env import ConsoleRun, chromium_path, start_console
from tests.fix_pg import drop_database
from tests.fix_servers import unavailable
from tests.integration.sync_harness import SyncEnv


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        unavailable("chromium", "no chromium binary (apt-get install chromium)")
    launched = playwright.chromium.launch(executable_path=path, headless=True)
    try:
        yield launched
    finally:
        launched.close()


class ConsoleErrors:
    """Errors the page logged or threw; a test ends by asserting there are none."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.messages.append(f"console: {message.text} ({message.location})")

    def on_error(self, error: Any) -> None:
        self.messages.append(f"page error: {error}")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    errors = ConsoleErrors()
    tab.on("console", errors.on_console)
    tab.on("pageerror", errors.on_error)
    try:
        yield tab
        assert errors.messages == [], "the console logged errors:\n" + "\n".join(errors.messages)
    finally:
        context.close()


@pytest.fixture(scope="module")
def console(
    pg_server: Any, kafka_bootstrap: str, registry_url: str, tmp_path_factory: Any
) -> Iterator[tuple[SyncEnv, ConsoleRun]]:
    """A database of its own with ``cdcsync run`` serving the console, for one module."""
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    env, run = start_console(
        pg_dsn=pg_server.dsn_for(dbname),
        bootstrap=kafka_bootstrap,
        registry_url=registry_url,
        prefix=f"c{uuid.uuid4().hex[:8]}",
        workdir=tmp_path_factory.mktemp("console"),
    )
    try:
        yield env, run
    finally:
        env.stop()
        drop_database(pg_server.dsn, dbname)
