"""`mailbridge report --html` opened in headless Chromium (Debian's, driven by Playwright).

A week of support history, built with a set clock, is written as a page by the CLI; the page
must load from the file with no request leaving it and no console error, draw every chart, show
the same total as `report --json`, and leave its screenshot in docs/report.png for the README.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailbridge.app import App
from mailbridge.cli import cli
from mailbridge.envelope import Envelope, Source
from tests.env import IN_CI, REPO
from tests.mail import make_mail, message_id_of

CHROMIUM = os.environ.get("MAILBRIDGE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = REPO / "docs" / "report.png"
END = "2026-11-12"
SOURCE = Source("imap", "support", live=False)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[test]')"
    else:
        if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
            return sync_playwright
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if IN_CI:
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def customer(app: App, subject: str, sender: str, reply_to: bytes | None = None) -> Any:
    raw = make_mail(
        sender=sender,
        subject=subject,
        in_reply_to=message_id_of(reply_to) if reply_to else None,
    )
    outcome = app.ingestor.accept(raw, Envelope(sender, ("support@example.com",)), SOURCE)
    return outcome.ticket, raw


def agent_reply(app: App, to: bytes) -> None:
    raw = make_mail(
        sender="alice@example.com", subject="Re", body="Done.\n", in_reply_to=message_id_of(to)
    )
    app.ingestor.accept(raw, Envelope(auth_user="alice"), SOURCE)


@pytest.fixture
def week(sqlite_app: App, clock: Any) -> Any:
    """A week: a few tickets a day; most answered within hours, some resolved, closed, reopened
    or marked spam, a few still waiting."""
    app = sqlite_app
    for day in range(7):
        for n in range(day % 3 + 2):
            number, raw = customer(app, f"Question {day}.{n}", f"c{day}{n}@customer.example")
            clock.advance(minutes=20 + 35 * n)
            if (day + n) % 4 != 3:
                agent_reply(app, raw)
            clock.advance(hours=1 + n)
            if n % 3 == 0:
                app.actions.act(number, "resolve", "cli:test")
            if n == 1 and day % 2:
                app.actions.act(number, "close", "cli:test")
            if day == 2 and n == 0:
                clock.advance(hours=2)
                customer(app, "Re: still broken", f"c{day}{n}@customer.example", reply_to=raw)
            if day == 4 and n == 2:
                app.actions.act(number, "spam", "cli:test")
        clock.advance(hours=20)
    return app


def test_the_page_loads_offline_draws_its_charts_and_agrees_with_json(
    week: Any, tmp_path: Path
) -> None:
    sync_playwright = _browser_or_skip()
    config = tmp_path / "mailbridge.toml"  # written by the make_settings fixture
    page_file = tmp_path / "report.html"
    made = CliRunner().invoke(
        cli,
        # a fixed end: the spans still open end there, so the picture is the same every run
        ["--config", str(config), "report", "--html", str(page_file), "--json", "--until", END],
        catch_exceptions=False,
    )
    assert made.exit_code == 0, made.output
    data = json.loads(made.stdout)
    assert data["tickets"]["total"] > 10

    page_html = page_file.read_text(encoding="utf-8")
    assert "<script src=" not in page_html and "<link" not in page_html  # nothing to fetch

    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")
            page.wait_for_selector("#chart-flow .main-svg")

            charts = page.eval_on_selector_all(
                ".chart",
                "els => els.map(e => [e.id, e.querySelectorAll('svg path, svg rect').length])",
            )
            total = page.inner_text("#total-tickets")
            sla = page.inner_text("#sla-empty")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()

    assert problems == []
    assert requests == [page_file.as_uri()]  # the page itself, and nothing else
    expected = {
        "chart-created",
        "chart-status",
        "chart-first-response",
        "chart-resolution",
        "chart-time-in-status",
        "chart-flow",
    }
    assert {cid for cid, _ in charts} == expected
    assert all(marks > 0 for _, marks in charts), charts
    assert total == str(data["tickets"]["total"])
    assert sla.startswith("No SLA configured")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "report.png", SCREENSHOT)


def test_since_and_until_bound_the_period(week: Any, tmp_path: Path) -> None:
    config = tmp_path / "mailbridge.toml"
    everything = CliRunner().invoke(cli, ["--config", str(config), "report", "--json"])
    bounded = CliRunner().invoke(
        cli,
        [
            "--config",
            str(config),
            "report",
            "--json",
            "--since",
            "2026-11-03",
            "--until",
            "2026-11-05",
        ],
    )
    assert everything.exit_code == 0 and bounded.exit_code == 0, bounded.output
    whole, part = json.loads(everything.stdout), json.loads(bounded.stdout)
    assert part["period"] == {"since": "2026-11-03T00:00:00Z", "until": "2026-11-05T00:00:00Z"}
    assert list(part["created_per_day"]) == ["2026-11-03", "2026-11-04"]
    created = {day: counts["support"] for day, counts in whole["created_per_day"].items()}
    assert part["tickets"]["total"] == created["2026-11-03"] + created["2026-11-04"]
    assert whole["tickets"]["total"] == sum(created.values())
