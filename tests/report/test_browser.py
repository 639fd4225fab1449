"""The report in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

What a person would check when opening the file: it loads from disk with no console errors,
every chart is drawn, an evidence link opens the cited thread, and hostile conversation text is
shown as text and never runs. A screenshot goes to ``benchmarks/results/report_screenshot.png``.

In CI (``CI=true``) a missing browser is a failure, not a skip: the browser test must run there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loop_middleware.report._render import render_report, thread_anchor
from tests.report._sample import (
    REFUND_FOLLOWUP,
    REFUND_THREAD_ID,
    XSS_IMG,
    XSS_SCRIPT,
    XSS_THREAD_ID,
    empty_report_data,
    sample_report_data,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "report_screenshot.png"
_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

webdriver: Any
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None


def _missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install selenium)"
    for p, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not p.exists():
            return f"{p} not found (apt-get install -y {pkg})"
    return None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless Chromium for the module, isolated in its own profile directory."""
    reason = _missing()
    if reason:
        if _IN_CI:
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(f"browser test skipped locally: {reason}")
    profile = tempfile.mkdtemp(prefix="loopmw-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                "--window-size=1280,900", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_report(sample_report_data(), tmp_path_factory.mktemp("report") / "report.html")


def _open(drv: Any, path: Path) -> list[dict[str, Any]]:
    """Load the page, wait until every chart is drawn, and return the console log entries."""
    drv.get_log("browser")  # drop entries from earlier pages
    drv.get(path.as_uri())
    WebDriverWait(drv, 30).until(lambda d: d.execute_script(
        "const f = document.querySelectorAll('div[data-figure]');"
        "return Array.from(f).every(x => x.querySelector('svg.main-svg'));"))
    return list(drv.get_log("browser"))


def test_loads_with_no_console_errors_and_draws_every_chart(driver: Any, report_path: Path) -> None:
    logs = _open(driver, report_path)
    severe = [e for e in logs if e.get("level") == "SEVERE"]
    assert severe == []
    figures = driver.find_elements(By.CSS_SELECTOR, "div[data-figure]")
    # volume, trend, heat map, two measured fixes, health timeline
    assert len(figures) == 6
    for fig in figures:
        assert "js-plotly-plot" in fig.get_attribute("class")
        assert fig.find_elements(By.CSS_SELECTOR, "svg.main-svg")
        assert fig.size["height"] > 100 and fig.size["width"] > 200
    # The heat map really drew cells, and the kept fix shows its badge.
    assert driver.find_elements(By.CSS_SELECTOR, "#signals .hm, #signals .heatmaplayer image")
    assert driver.find_element(By.CSS_SELECTOR, "#fix-f1 .badge.keep").is_displayed()
    assert driver.find_element(By.CSS_SELECTOR, "#fix-f2 .badge.wait").is_displayed()


def test_evidence_link_opens_the_cited_thread(driver: Any, report_path: Path) -> None:
    _open(driver, report_path)
    anchor = thread_anchor(REFUND_THREAD_ID)
    thread = driver.find_element(By.ID, anchor)
    assert thread.get_attribute("open") is None  # collapsed until someone follows a link
    assert REFUND_FOLLOWUP not in thread.text  # the summary shows only the opening request
    link = driver.find_element(
        By.CSS_SELECTOR, f"#diagnosis-d1 a.evlink[data-thread='{anchor}']")
    link.click()
    WebDriverWait(driver, 10).until(lambda d: "#thread-" in d.current_url)
    assert f"#{anchor}" in driver.current_url
    thread = driver.find_element(By.ID, anchor)
    WebDriverWait(driver, 10).until(lambda d: thread.get_attribute("open") is not None)
    assert thread.is_displayed()
    assert REFUND_FOLLOWUP in thread.text
    # The tool/LLM trace is readable: the prompt version's name and short hash are shown.
    assert "prompt support" in thread.text
    # The cited turn is scrolled into view.
    turn = driver.find_element(By.ID, f"{anchor}-turn-0")
    in_view = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.top >= 0 && r.top < window.innerHeight;", turn)
    assert in_view


def test_hostile_text_is_shown_as_text_and_never_runs(driver: Any, report_path: Path) -> None:
    logs = _open(driver, report_path)
    assert [e for e in logs if e.get("level") == "SEVERE"] == []
    driver.get(report_path.as_uri() + f"#{thread_anchor(XSS_THREAD_ID)}")
    driver.refresh()  # a fresh load with the fragment: the page opens the thread itself
    thread = driver.find_element(By.ID, thread_anchor(XSS_THREAD_ID))
    WebDriverWait(driver, 10).until(lambda d: thread.get_attribute("open") is not None)
    text = thread.text
    assert XSS_SCRIPT in text
    assert XSS_IMG in text
    assert "**bold** [click me](javascript:window.__xss='md') <b>raw html</b>" in text
    # Nothing ran, and the injected markup never became elements.
    assert driver.execute_script("return typeof window.__xss") == "undefined"
    assert driver.execute_script("return document.images.length") == 0
    assert driver.execute_script(
        "return document.querySelectorAll('a[href^=\"javascript\"], b, i').length") == 0
    # A javascript: PR link is shown as code, not as a link.
    assert not driver.find_elements(By.CSS_SELECTOR, "#fix-f3 a.pr")
    # plotly interprets <b> in labels; the escaped intent name must show literally on the axis.
    ticks = driver.execute_script(
        "return Array.from(document.querySelectorAll('#intents .ytick text'))"
        ".map(t => t.textContent);")
    assert "price increase <b>2025</b>" in ticks


def test_empty_report_shows_no_data_states(
    driver: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = render_report(empty_report_data(), tmp_path_factory.mktemp("empty") / "empty.html")
    logs = _open(driver, path)
    assert [e for e in logs if e.get("level") == "SEVERE"] == []
    empties = driver.find_elements(By.CSS_SELECTOR, ".empty")
    assert len(empties) == 6
    assert all(e.is_displayed() and "No data yet" in e.text for e in empties)


def test_screenshot(driver: Any, report_path: Path) -> None:
    """Save a screenshot of the top of the report (header, intents, heat map, diagnoses)."""
    _open(driver, report_path)
    height = driver.execute_script(
        "return document.getElementById('fixes').getBoundingClientRect().bottom + window.scrollY;")
    driver.set_window_size(1280, min(int(height) + 20, 4200))
    try:
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(
            "return document.readyState === 'complete'"))
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.set_window_size(1280, 900)
    assert SCREENSHOT.stat().st_size > 50_000
