"""Screenshots of the console's pages: ``python -m tests.browser.screenshots OUTDIR``.

Starts throwaway PostgreSQL, broker and registry servers, the test CRM and ``cdcsync run``
with the console (as the browser tests do), writes a short workload with a few records the
CRM refuses (dead letters), lets the charts gather a minute of samples, and saves
``overview.png`` and ``integration.png`` (the CRM integration's page) in OUTDIR, taken by
Debian's chromium at a laptop's 1366 px width.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from playwright.sync_api import sync_playwright

from cdc.demo.throwaway import LocalBroker, LocalPostgres, LocalRegistry
from tests.browser.console_env import (
    REJECTED,
    TOKEN,
    chromium_path,
    insert_customers,
    start_console,
)
from tests.integration.sync_harness import run_workload

SAMPLING_S = 60


def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    browser_path = chromium_path()
    if browser_path is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    pg, broker, registry = LocalPostgres().start(), LocalBroker().start(), LocalRegistry().start()
    try:
        env, run = start_console(
            pg_dsn=pg.dsn,
            bootstrap=broker.bootstrap,
            registry_url=registry.url,
            prefix=f"shot{uuid.uuid4().hex[:6]}",
            workdir=Path(tempfile.mkdtemp(prefix="cdcsync-shots-")),
        )
        try:
            env.crm.store.set_faults(reject_keys=list(REJECTED))
            done = threading.Event()
            load = threading.Thread(target=workload, args=(env.dsn, done), daemon=True)
            load.start()
            time.sleep(SAMPLING_S)
            insert_customers(env.dsn, [int(k) for k in REJECTED])
            run.wait_until(
                "dead letters",
                lambda: run.api("/status")["integrations"]["crm"]["dead_lettered"] >= 3,
            )
            time.sleep(7)  # two more samples
            try:
                shoot(browser_path, run.url, outdir)
            finally:
                done.set()
                load.join()
        finally:
            env.stop()
    finally:
        registry.stop()
        broker.stop()
        pg.stop()


def workload(dsn: str, done: threading.Event) -> None:
    """Batches of writes in a varying rhythm, so the charts have something to draw."""
    batch = 0
    while not done.is_set():
        size = 5 + 10 * (batch % 4)
        base = 100_000 * (batch + 1)
        run_workload(dsn, customers=size, orders=2 * size, seed=batch, id_base=base)
        batch += 1
        done.wait(2)


def shoot(browser_path: str, url: str, outdir: Path) -> None:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=browser_path, headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 860})
        page.goto(url + "/console/")
        page.get_by_label("Admin token").fill(TOKEN)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_selector('tr[data-integration="crm"]')
        page.screenshot(path=str(outdir / "overview.png"), full_page=True)
        page.goto(url + "/console/integrations/crm")
        page.wait_for_selector('[data-chart="throughput"] canvas')
        page.wait_for_timeout(1000)
        page.screenshot(path=str(outdir / "integration.png"), full_page=True)
        browser.close()
    print(f"screenshots in {outdir}: overview.png, integration.png")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.browser.screenshots OUTDIR")
    main(Path(sys.argv[1]))
