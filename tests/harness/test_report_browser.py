"""The HTML report in a real headless browser: the system Chromium driven by Playwright.

Skipped (with the reason) where Playwright or a `chromium` executable is missing; CI installs both
(`.ci/run`: `apt-get install chromium`, Playwright from the `dev` extra) and sets SAE_REQUIRE_BROWSER=1, which
turns the skip into a failure.
"""

import os
import shutil

import pytest

from benchmark.html_report import write_html_report
from benchmark.trace import write_traces


def _browser_or_skip():
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright is not installed (pip install -e '.[dev]')")
        sync_playwright = None
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        missing.append("no system chromium on PATH (Debian: apt-get install -y chromium)")
    if missing:
        reason = "browser test needs a headless Chromium: " + "; ".join(missing)
        if os.environ.get("SAE_REQUIRE_BROWSER"):
            pytest.fail(reason + " (SAE_REQUIRE_BROWSER is set)")
        pytest.skip(reason)
    return sync_playwright, executable


@pytest.fixture(scope="module")
def browser():
    sync_playwright, executable = _browser_or_skip()
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, path):
    """The page at `path` loaded from disk, with every console error, page error and failed request."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    problems = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    # lazy images load when scrolled to: load them all and wait, so that a broken one is seen
    broken = page.evaluate("""() => Promise.all([...document.images].map(img => {
        img.loading = "eager";
        return img.decode().then(() => img.naturalWidth > 0 ? null : img.src, () => img.src);
    })).then(results => results.filter(Boolean))""")
    return page, problems, broken


def test_report_pages_load_without_errors_and_show_every_grid_image(browser, report_run, tiny_model_dir, tmp_path):
    run = report_run(tmp_path / "run", model=tiny_model_dir)
    assert write_traces(run, 1) == ["r/0"]  # the report renders the traces the folder holds
    index = write_html_report(run, images_per_page=8)  # 2 prompts a page
    report = run / "report"
    expected = {"category-two.html": 8, "category-two-2.html": 4, "category-three.html": 4}
    page, problems, broken = open_page(browser, index)
    assert (problems, broken) == ([], [])
    links = page.eval_on_selector_all("a", "links => links.map(a => a.getAttribute('href'))")
    assert {"category-two.html", "category-three.html", "attention.html"} <= set(links)
    images = 0
    for name, count in expected.items():
        page, problems, broken = open_page(browser, report / name)
        assert (problems, broken) == ([], []), name
        assert page.locator("img.grid-image").count() == count, name
        images += count
    assert images == 16
    # the filter hides the images where every object was found: plain at seed 1 missed one object per prompt
    page, _, _ = open_page(browser, report / "category-two.html")
    page.check("#only-missed")
    visible = page.eval_on_selector_all(
        "figure.cell", "cells => cells.filter(c => getComputedStyle(c).visibility !== 'hidden').length")
    assert visible == 2 + 1  # r/0 and r/1 at plain seed 1, and sepen's unscored r/0 seed 0
    # the attention page: plain traced on the local tiny model; sepen has no cached checkpoint, and says so
    page, problems, broken = open_page(browser, report / "attention.html")
    assert (problems, broken) == ([], [])
    assert page.locator("img.attention-figure").count() == 1
    assert "sepen: no checkpoint for this prompt" in page.inner_text("body")
