"""The local server's web view in a real headless browser (Debian's Chromium via Selenium),
on pages holding real runs: sign-in, the runs list and its filters, run pages with plots of
the right number of points, and visibility between users."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from simvue_otel._internal.client import SimvueClient, format_timestamp
from tests.helpers import LocalServer, poll

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Set (to 1) where the browser tests must run, as in CI: then a missing browser is a failure
# rather than a skip, so the web view is never left untested there without anyone noticing.
REQUIRE_BROWSER = "SIMVUE_OTEL_REQUIRE_BROWSER"


def _require_browser_binaries() -> None:
    """Skip (or, with ``SIMVUE_OTEL_REQUIRE_BROWSER=1``, fail) when Chromium or its driver is
    not installed: Selenium would otherwise end each test in ``NoSuchDriverException``."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    reason = (
        f"the browser tests need Debian's Chromium and its driver ({', '.join(missing)} not "
        "found): apt-get install chromium chromium-driver"
    )
    if os.environ.get(REQUIRE_BROWSER, "") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_BROWSER} is set, so they may not be skipped)")
    pytest.skip(reason)


def _browser() -> Any:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser() -> Iterator[Any]:
    _require_browser_binaries()
    driver = _browser()
    yield driver
    driver.quit()


def sign_in(driver: Any, server: LocalServer, token: str) -> None:
    """Sign in as a person would: open the form, paste the token, submit."""
    driver.delete_all_cookies()
    driver.get(server.url + "/login")
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "/login" not in driver.current_url, driver.page_source[:500])


def wait_for(condition: Any, message: str = "condition not met in 10 s") -> None:
    """Wait for a page navigation to show (a click returns before the next page loads)."""
    assert poll(condition, bool, 10, interval=0.05), message


def make_run(client: SimvueClient, folder: str, name: str, tags: list[str], points: int) -> str:
    run_id = client.create_run(name=name, folder=folder, tags=tags, metadata={"n": points})
    t0 = time.time()
    client.post_metrics(
        run_id,
        [
            {"values": {"x": i * 0.5, "resources/cpu.usage.percentage": 10.0 + i % 3},
             "step": i, "time": i * 0.1, "timestamp": format_timestamp(t0 + i)}
            for i in range(points)
        ],
    )  # fmt: skip
    client.post_events(run_id, [{"message": f"{name} started", "timestamp": format_timestamp(t0)}])
    return str(run_id)


def test_runs_list_run_page_and_plots(browser: Any, local_server: LocalServer) -> None:
    folder = f"/web/{uuid.uuid4().hex[:8]}"
    with SimvueClient(local_server.url, local_server.token) as client:
        first = make_run(client, folder, "web-first", ["alpha"], 37)
        second = make_run(client, folder, "web-second", ["beta"], 12)
        client.set_status(second, "completed")
    sign_in(browser, local_server, local_server.token)

    browser.get(f"{local_server.url}/?folder={folder}")
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#runs tr.run-row td a")]
    assert sorted(names) == ["web-first", "web-second"]

    browser.get(f"{local_server.url}/?folder={folder}&tag=alpha")
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#runs tr.run-row td a")]
    assert names == ["web-first"]
    browser.get(f"{local_server.url}/?folder={folder}&status=completed")
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#runs tr.run-row td a")]
    assert names == ["web-second"]

    # The filter form itself, driven through the page.
    browser.get(f"{local_server.url}/")
    browser.find_element(By.NAME, "folder").send_keys(folder)
    browser.find_element(By.NAME, "tag").send_keys("beta")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(lambda: "tag=beta" in browser.current_url)
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#runs tr.run-row td a")]
    assert names == ["web-second"]

    browser.get(f"{local_server.url}/runs/{first}")
    assert "web-first" in browser.find_element(By.TAG_NAME, "h2").text
    plot = browser.find_element(By.CSS_SELECTOR, "#metrics .plot[data-metric='x'] svg")
    assert plot.get_attribute("data-points") == "37"
    assert len(plot.find_elements(By.CSS_SELECTOR, "circle.pt")) == 37
    assert plot.size["width"] > 100 and plot.size["height"] > 100, "the plot is drawn"
    # resources/ metrics are grouped apart from the run's own
    assert browser.find_elements(By.CSS_SELECTOR, "#metrics .plot[data-metric^='resources/']") == []
    grouped = browser.find_element(
        By.CSS_SELECTOR, "#resources .plot[data-metric='resources/cpu.usage.percentage'] svg"
    )
    assert grouped.get_attribute("data-points") == "37"
    events = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#events tr.event-row")]
    assert len(events) == 1 and "web-first started" in events[0]
    assert "alpha" in browser.find_element(By.TAG_NAME, "dl").text

    # Works offline: nothing on the page is fetched from anywhere but the server itself.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert all(r.startswith(local_server.url) for r in resources), resources
    source = browser.page_source
    assert "<script" not in source and "http://" not in source.replace(local_server.url, "")

    browser.get(f"{local_server.url}/runs/{first}?x=time")
    plot = browser.find_element(By.CSS_SELECTOR, "#metrics .plot[data-metric='x'] svg")
    assert plot.get_attribute("data-points") == "37"
    assert "(time)" in plot.text


def test_a_user_cannot_see_another_users_private_run(
    browser: Any, local_server: LocalServer
) -> None:
    folder = f"/web-private/{uuid.uuid4().hex[:8]}"
    owner = local_server.token_for("web-owner")
    with SimvueClient(local_server.url, owner) as client:
        private = make_run(client, folder, "owners-secret", ["private"], 5)
    sign_in(browser, local_server, local_server.token_for("web-other"))
    browser.get(f"{local_server.url}/runs/{private}")
    wait_for(lambda: "No such run" in browser.page_source)  # a 404 page: wait until it shows
    browser.get(f"{local_server.url}/?folder={folder}")
    assert browser.find_elements(By.CSS_SELECTOR, "#runs tr.run-row") == []

    sign_in(browser, local_server, owner)
    browser.get(f"{local_server.url}/runs/{private}")
    assert "owners-secret" in browser.find_element(By.TAG_NAME, "h2").text


def test_pages_need_a_session_and_a_bad_token_is_refused(
    browser: Any, local_server: LocalServer
) -> None:
    browser.delete_all_cookies()
    browser.get(f"{local_server.url}/")
    assert "/login" in browser.current_url
    browser.find_element(By.NAME, "token").send_keys("not-a-token")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "not valid for this server" in browser.page_source)
    assert "not-a-token" not in browser.find_element(By.TAG_NAME, "main").text


def test_sign_in_link_printed_by_the_server_works(browser: Any, local_server: LocalServer) -> None:
    link = next(
        line.split("Web view: ", 1)[1].split()[0]
        for line in local_server.log.read_text().splitlines()
        if line.startswith("Web view: ")
    )
    browser.delete_all_cookies()
    browser.get(link)  # opening the link shows whose it is; the button signs in
    assert "/login" in browser.current_url
    assert browser.find_element(By.ID, "login-user").text
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "/login" not in browser.current_url, browser.page_source[:500])
    assert browser.find_element(By.ID, "runs")
