"""The web console in headless Chromium against a real ``cdcsync run``: live figures on the
overview, pause/resume and dead-letter replay from an integration's page, no console
errors; and its access rules (token, session cookie, CSRF) over plain HTTP."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.console_env import REJECTED, TOKEN, ConsoleRun, insert_customers, insert_order
from tests.integration.sync_harness import SyncEnv

pytestmark = pytest.mark.browser

Console = tuple[SyncEnv, ConsoleRun]


def log_in(page: Page, run: ConsoleRun) -> None:
    page.goto(run.url + "/console/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()


def row(page: Page, name: str, cell: str) -> Locator:
    return page.locator(f'tr[data-integration="{name}"] [data-testid="{cell}"]')


def test_the_overview_shows_capture_and_each_integration_and_follows_them_live(
    console: Console, page: Page
) -> None:
    env, run = console
    log_in(page, run)
    expect(page.get_by_test_id("slot")).to_have_text(env.capture.slot)
    expect(row(page, "crm", "state")).to_have_text("running")
    expect(row(page, "analytics", "state")).to_have_text("running")
    # No navigation from here on: what changes below arrives by the live refresh.
    page.evaluate("window.stillTheSamePage = true")
    insert_customers(env.dsn, range(1, 13))
    insert_order(env.dsn, 1, customer=1, amount=5)
    expect(row(page, "crm", "applied")).to_have_text("12", timeout=20_000)
    expect(row(page, "analytics", "applied")).to_have_text("1", timeout=20_000)
    expect(page.get_by_test_id("events")).to_have_text(re.compile(r"^1[3-9]$|^[2-9]\d$"))
    expect(page.get_by_test_id("confirmed-lsn")).to_have_text(re.compile(r"^[0-9A-F]+/[0-9A-F]+$"))
    # Once sampled, lag is a number of records (0 when caught up).
    expect(row(page, "crm", "lag")).to_have_text("0", timeout=15_000)
    expect(row(page, "crm", "dead-letters")).to_have_text("0")
    assert page.evaluate("window.stillTheSamePage") is True


def test_pausing_and_resuming_from_the_integration_page_stops_and_restarts_its_target(
    console: Console, page: Page
) -> None:
    env, run = console
    log_in(page, run)
    # By keyboard: the integration's link, then its pause button.
    page.locator("#open-crm").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Integration crm")).to_be_visible()
    expect(page.locator("#checks tbody tr").first).to_contain_text("healthy", timeout=10_000)
    throughput = page.locator('[data-chart="throughput"]')
    expect(throughput.locator("canvas")).to_have_count(1, timeout=10_000)
    expect(page.locator('[data-chart="lag"] canvas')).to_have_count(1)
    expect(page.get_by_test_id("reconcile")).to_be_visible()

    page.get_by_role("button", name="Pause crm").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#summary").get_by_test_id("state")).to_have_text("paused")
    # The keyboard focus stays on the (now) resume button, across the live refresh too.
    focused = page.locator("#pause-resume:focus")
    expect(focused).to_have_text("Resume crm")
    page.wait_for_timeout(3500)
    expect(focused).to_have_text("Resume crm")
    assert run.api("/status")["integrations"]["crm"]["paused"] is True
    insert_customers(env.dsn, range(101, 106))
    insert_order(env.dsn, 2, customer=1, amount=7)
    # The later marker: the other integration applied the order written after the customers.
    run.wait_until("analytics applied order 2", lambda: "2" in env.analytics_orders())
    assert not {"101", "102", "103", "104", "105"} & set(env.crm_contacts())

    page.get_by_role("button", name="Resume crm").click()
    expect(page.locator("#summary").get_by_test_id("state")).to_have_text("running")
    run.wait_until(
        "the CRM has the customers written while paused",
        lambda: {"101", "105"} <= set(env.crm_contacts()),
    )
    # The chart has drawn samples from the ring buffer.
    expect(throughput).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"), timeout=10_000)
    expect(page.locator("#throughput-summary")).to_contain_text("applied/s now")


def test_dead_letters_are_listed_and_replayed_one_and_then_all_from_the_page(
    console: Console, page: Page
) -> None:
    env, run = console
    env.crm.store.set_faults(reject_keys=list(REJECTED))
    insert_customers(env.dsn, [int(k) for k in REJECTED])
    run.wait_until(
        "the CRM's refusals are dead-lettered",
        lambda: run.api("/status")["integrations"]["crm"]["dead_lettered"] >= len(REJECTED),
    )
    log_in(page, run)
    page.goto(run.url + "/console/integrations/crm")
    letters = page.locator("#dead-letter-table tbody tr")
    expect(letters).to_have_count(3)
    expect(letters.first.get_by_test_id("key")).to_have_text("9001")
    expect(letters.first).to_contain_text("400")
    expect(letters.first.locator("summary")).to_contain_text("Customer 9001")

    # While the CRM still refuses it, a replay fails again and the dead letter stays.
    first_id = letters.first.get_attribute("data-dead-letter")
    page.locator(f"#replay-{first_id}").click()
    expect(page.get_by_test_id("replay-result")).to_contain_text(
        f"0 replayed (0 applied), 1 failed again (#{first_id}: ", timeout=20_000
    )
    expect(letters).to_have_count(3)
    expect(letters.first).to_contain_text("(+1 replays)")

    env.crm.store.clear_faults()
    page.locator(f"#replay-{first_id}").click()
    expect(page.get_by_test_id("replay-result")).to_have_text(
        "Replay: 1 replayed (1 applied).", timeout=20_000
    )
    expect(letters).to_have_count(2)
    assert "9001" in env.crm_contacts()

    page.get_by_role("button", name="Replay all 2 dead letters").click()
    expect(page.get_by_test_id("replay-result")).to_have_text(
        "Replay: 2 replayed (2 applied).", timeout=20_000
    )
    expect(page.get_by_test_id("no-dead-letters")).to_be_visible()
    assert set(REJECTED) <= set(env.crm_contacts())
    # A refresh of the list (as its poll does every 10 s) keeps the replay's message.
    page.evaluate(
        """() => new Promise((settled) => {
            document.body.addEventListener("htmx:afterSettle", settled, {once: true});
            htmx.ajax("GET", "/console/integrations/crm/parts/dead-letters",
                      {target: "#dead-letters", swap: "innerHTML"});
        })"""
    )
    expect(page.get_by_test_id("no-dead-letters")).to_be_visible()
    expect(page.get_by_test_id("replay-result")).to_have_text("Replay: 2 replayed (2 applied).")
    page.goto(run.url + "/console/")
    expect(row(page, "crm", "dead-letters")).to_have_text("0", timeout=10_000)


def test_a_target_outage_shows_as_an_open_circuit_with_its_error_and_failed_checks(
    console: Console, page: Page
) -> None:
    env, run = console
    log_in(page, run)
    env.crm.store.set_faults(status=503, count=100_000)
    try:
        expect(row(page, "crm", "state")).to_have_text("circuit open", timeout=15_000)
        expect(row(page, "crm", "last-error")).to_contain_text("503")
        expect(row(page, "analytics", "state")).to_have_text("running")
        page.locator("#open-crm").click()
        expect(page.locator("#checks tbody tr").first).to_contain_text("failed")
        expect(page.locator("#checks tbody tr").first).to_contain_text("503")
    finally:
        env.crm.store.clear_faults()
    expect(page.locator("#summary").get_by_test_id("state")).to_have_text("running", timeout=15_000)
    expect(page.locator("#checks tbody tr").first).to_contain_text("healthy")


def test_the_console_needs_the_token_and_its_actions_a_csrf_token(console: Console) -> None:
    _, run = console
    pause = run.url + "/console/integrations/crm/pause"
    with httpx.Client(base_url=run.url, timeout=10) as anonymous:
        page = anonymous.get("/console/integrations/crm")
        assert page.status_code == 303
        assert page.headers["location"] == "/console/login?next=/console/integrations/crm"
        assert anonymous.get("/console/parts/overview").status_code == 401
        assert anonymous.get("/console/integrations/crm/series").status_code == 401
        assert anonymous.post(pause).status_code == 401
        wrong = anonymous.post("/console/login", data={"token": "nope"})
        assert wrong.status_code == 200
        assert "set-cookie" not in wrong.headers
        assert "not the admin token" in wrong.text
        # The vendored scripts are served from the package, with their licences.
        for asset in ("htmx-2.0.11.min.js", "uPlot-1.6.32.iife.min.js", "htmx-LICENSE.txt"):
            assert anonymous.get(f"/console/static/vendor/{asset}").status_code == 200

    with httpx.Client(base_url=run.url, timeout=10) as browser:
        login = browser.post("/console/login", data={"token": TOKEN, "next": "/console/"})
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert TOKEN not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        page = browser.get("/console/integrations/crm")
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        # The session alone is not enough, nor a CSRF token sent from another site.
        assert browser.post(pause).status_code == 403
        foreign = browser.post(
            pause, data={"csrf": csrf.group(1)}, headers={"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        assert run.api("/status")["integrations"]["crm"]["paused"] is False
        # With both, the form works; a bearer client needs no CSRF token.
        done = browser.post(pause, data={"csrf": csrf.group(1)})
        assert done.status_code == 303
        assert run.api("/status")["integrations"]["crm"]["paused"] is True
    resumed = httpx.post(
        run.url + "/console/integrations/crm/resume",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert resumed.status_code == 303
    assert run.api("/status")["integrations"]["crm"]["paused"] is False
