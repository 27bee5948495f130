"""The dashboard in a real browser: headless Chromium (Debian's package, driven by
Playwright with executable_path) against the local API server, real PostgreSQL and moto,
with demo batches processed by the offline models. One browser launch for the whole file.

Saves .local/dashboard.png; PROMPTRUN_UPDATE_SCREENSHOT=1 also writes docs/dashboard.png,
the README's picture."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from promptrun.api import build_app
from promptrun.aws import JobQueue
from promptrun.fanout import FanoutRequest, run_fanout
from promptrun.local.api_server import LocalApi
from promptrun.processor import JobRunner
from promptrun.settings import Settings
from tests.conftest import EXAMPLE_CATALOG, sync
from tests.support.sqs import receive_all

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[2]
TOKEN = "browser-test-token"
DAYS = 3
START = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=DAYS)
DAY_KEYS = [(START + timedelta(days=n)).strftime("%Y-%m-%d") for n in range(DAYS)]


def chromium_path() -> str:
    path = os.environ.get("PROMPTRUN_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "Chromium not found: run scripts/chromium.sh (make test does) or set PROMPTRUN_CHROMIUM"
        )
    return path


@pytest.fixture
def demo(engine: Engine, settings: Settings, sqs: Any) -> Engine:
    """The demo catalogue, its batches on three days, every job processed."""
    sync(engine, EXAMPLE_CATALOG.read_text())
    runner = JobRunner(engine, settings, JobQueue(settings.jobs_queue_url or ""))
    # Recent days: the page charts the last 90 days.
    start = START
    for n in range(DAYS):
        request = FanoutRequest(at=start + timedelta(days=n))
        run_fanout(engine, JobQueue(settings.jobs_queue_url or ""), request, settings)
        for msg in receive_all(sqs, settings.jobs_queue_url, delete=True):
            runner.handle(msg["Body"], None)
    return engine


@pytest.fixture
def server(demo: Engine) -> Iterator[str]:
    api = LocalApi(build_app(lambda: demo, lambda: TOKEN).resolve, port=0, quiet=True).start()
    yield api.url
    api.stop()


def test_dashboard_in_headless_chromium(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            requests: list[tuple[str, str | None]] = []
            page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))

            page.goto(f"{server}/dashboard")
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            # A wrong token is refused, and the form says so.
            page.get_by_label("API token").fill("wrong-token")
            page.get_by_role("button", name="Open the dashboard").click()
            expect(page.locator("#login-error")).to_contain_text("not accepted")

            page.get_by_label("API token").fill(TOKEN)
            page.get_by_role("button", name="Open the dashboard").click()

            # Batch rows: three daily batches and one weekly, per model.
            rows = page.locator("#batches tr.batch-row")
            expect(rows.first).to_be_visible()
            batches = set(rows.evaluate_all("rs => rs.map(r => r.dataset.batch)"))
            assert set(DAY_KEYS) <= batches
            expect(page.locator("#models tbody tr")).to_have_count(2)

            # The chart: server-side SVG with one point per model and batch, values in 0..1.
            points = page.locator("#chart-mention_rate svg .point")
            expect(points.first).to_be_attached()
            values = [float(v) for v in points.evaluate_all("ps => ps.map(p => p.dataset.value)")]
            assert len(values) >= 2 * DAYS and all(0 <= v <= 1 for v in values)
            expect(page.locator("#chart-mention_rate svg title").first).to_contain_text(
                "mention rate"
            )
            expect(page.locator("#chart-share_of_voice svg .point").first).to_be_attached()

            # Drill-down: open an answer, its mentions highlighted.
            page.select_option("#answers-batch", DAY_KEYS[-1])
            page.select_option("#answers-prompt", "best-crm-small-business")
            item = page.locator("#answers li.answer").filter(has_text="Acme CRM").first
            toggle = item.get_by_role("button")
            expect(toggle).to_have_attribute("aria-expanded", "false")
            toggle.click()
            expect(toggle).to_have_attribute("aria-expanded", "true")
            answer = item.locator(".answer-text")
            expect(answer).to_be_visible()
            expect(answer).to_contain_text("[offline synthetic answer]")
            # Every mention marked: the own brand as such, a tracked competitor as a brand,
            # anything else plainly (which of them an answer names depends on the date: the
            # offline model's seed is the batch key).
            expect(answer.locator("mark.own")).to_have_text("Acme CRM")
            marks = answer.locator("mark").evaluate_all(
                "ms => ms.map(m => [m.className, m.textContent, m.title])"
            )
            mentions = re.search(r": (\d+) mentions", toggle.inner_text())
            assert mentions is not None and len(marks) == int(mentions.group(1)), marks
            assert [text for cls, text, _ in marks if cls == "own"] == ["Acme CRM"]
            assert {cls for cls, _, _ in marks} <= {"own", "brand", "entity"}, marks
            for cls, _, title in marks:
                assert ("tracked brand" in title) == (cls in ("own", "brand")), marks

            # The token: in sessionStorage and the Authorization header, in no URL.
            assert page.evaluate("sessionStorage.getItem('promptrun.token')") == TOKEN
            assert all(TOKEN not in url for url, _ in requests)
            data = [auth for url, auth in requests if "/dashboard/overview" in url]
            assert f"Bearer {TOKEN}" in data

            out = REPO / ".local" / "dashboard.png"
            out.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            if os.environ.get("PROMPTRUN_UPDATE_SCREENSHOT") == "1":
                (REPO / "docs").mkdir(exist_ok=True)
                page.screenshot(path=str(REPO / "docs" / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    # Only the deliberate wrong token's 401 may have been logged.
    assert [p for p in problems if "401" not in p] == []
