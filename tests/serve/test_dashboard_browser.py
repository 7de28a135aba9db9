"""The dashboard in a real headless Chromium: a burst through the API shows up live."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.serve.harness import APPS, ROOT, serving

CHROMIUM = os.environ.get("SHOAL_CHROMIUM") or shutil.which("chromium") or ""
UPDATE_DOCS = os.environ.get("SHOAL_UPDATE_SCREENSHOT") == "1"

pytestmark = pytest.mark.skipif(
    not CHROMIUM and os.environ.get("SHOAL_REQUIRE_BROWSER") != "1",
    reason="no chromium (scripts/browser-setup.sh installs it)",
)


@pytest.mark.timeout(240)
def test_dashboard_follows_a_burst(no_leaked_children: None, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with serving(str(APPS)) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelector('#conn').textContent === 'live'")
            pool = page.locator("section.pool[data-pool='echo']")
            pool.wait_for()
            before = pool.locator("ol.timeline li").count()

            # a burst: 40 runs of 0.4 s each on an auto-scaled pool of at most 6 instances
            errors: list[str] = []

            def burst() -> None:
                with server.client() as c:
                    for i in range(40):
                        r = c.post("/runs/echo", json={"value": i, "delay": 0.4})
                        if r.status_code != 202:
                            errors.append(r.text)

            sender = threading.Thread(target=burst)
            sender.start()
            sender.join(60)
            assert not errors

            # the chart grows: the pool's size line reaches above one agent ...
            page.wait_for_function(
                "Number(document.querySelector(\"section[data-pool='echo'] [data-field='peak']\")"
                ".textContent) > 1"
            )
            page.wait_for_function(
                "Number(document.querySelector(\"section[data-pool='echo'] "
                "polyline[data-series='size']\").dataset.max) > 1"
            )
            # ... the timeline shows the decisions, with their reasons ...
            page.wait_for_function(
                f"document.querySelectorAll(\"section[data-pool='echo'] ol.timeline li\").length"
                f" > {before}"
            )
            # ... and every run of the burst ends up succeeded in the runs table.
            page.wait_for_function(
                "document.querySelectorAll('#runs tr[data-status=succeeded]').length >= 30"
            )
            points = int(pool.locator("svg.chart").get_attribute("data-points") or 0)
            assert points >= 4
            reasons = pool.locator("ol.timeline li .reason").all_inner_texts()
            assert any(r.strip() for r in reasons)
            kinds = set(
                pool.locator("ol.timeline li").evaluate_all("els => els.map(e => e.dataset.kind)")
            )
            assert kinds & {"start", "scale"}
            assert (
                pool.locator("[data-field='wait_p99']").inner_text() != "\u2013"
            )  # the placeholder dash
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
            if UPDATE_DOCS:
                (ROOT / "docs").mkdir(exist_ok=True)
                page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)
        finally:
            browser.close()
