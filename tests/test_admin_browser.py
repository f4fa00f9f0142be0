"""The run console in a real browser: headless Chromium driven by Selenium against a live
server, the way Django tests its own admin.

It logs in through the admin's login form, reads a failed run's timeline (one bar per
attempt), replays the run with the page's button, and takes the documentation's
screenshots (admin-runs.png, admin-functions.png, admin-run.png): into a temporary folder,
or over docs/images/ with ``WORKFLOWS_UPDATE_SCREENSHOTS=1`` (a test run leaves the
checkout as it found it).

Needs Debian's Chromium and its driver (``apt-get install chromium chromium-driver``) and
Selenium (``pip install -e .[test]``); nothing is downloaded while the test runs. Without
them the test is skipped, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.urls import reverse

import django_workflows as wf
from django_workflows.models import Attempt, Run
from django_workflows.testing import drain

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 900)
MAX_HEIGHT = 2400  # a taller screenshot's (the run page, down to its timeline)
WAIT_SECONDS = 10
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
IMAGES = DOCS_IMAGES if os.environ.get("WORKFLOWS_UPDATE_SCREENSHOTS") == "1" else Path(
    tempfile.mkdtemp(prefix="wf-screenshots-")
)
HOW_TO_GET_THEM = (
    "the browser test needs Debian's Chromium and its driver "
    f"({CHROMIUM}, {CHROMEDRIVER}: `apt-get install chromium chromium-driver`) "
    "and Selenium (`pip install -e .[test]`)"
)
PASSWORD = "console-test-password"


def _missing() -> list[str]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    return missing


def require_browser() -> None:
    """Skip without Chromium, its driver or Selenium; fail instead in CI."""
    missing = _missing()
    if missing:
        message = f"missing {', '.join(missing)}: {HOW_TO_GET_THEM}"
        if os.environ.get("CI") == "true":  # in CI a missing browser is a failure
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[object]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(argument)
    # A driver path given: Selenium Manager is not asked for (nor downloads) anything.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    set_viewport(driver, *WINDOW)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


# -- helpers ----------------------------------------------------------------------------------


def set_viewport(driver, width: int, height: int) -> None:
    """The page's own size (not the window's, which includes the browser's frame)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def wait(driver):
    """Explicit waits; an element replaced by a reload (a live run's page reloads itself
    every few seconds) is looked for again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, WAIT_SECONDS, ignored_exceptions=ignored)


def open_page(driver, live_server, url: str, ready_css: str) -> None:
    """Go to ``url`` and wait until ``ready_css`` is on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    driver.get(live_server.url + url)
    wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, ready_css)))


def screenshot(driver, name: str, *, down_to: str | None = None) -> Path:
    """The page as IMAGES/<name> (see the module's docstring): its first WINDOW, or with
    ``down_to`` (a CSS selector) WINDOW wide and as high as the bottom of that element."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / name
    driver.execute_script("window.scrollTo(0, 0)")
    if down_to:
        bottom = driver.execute_script(
            "return Math.ceil(document.querySelector(arguments[0]).getBoundingClientRect().bottom)",
            down_to,
        )
        set_viewport(driver, WINDOW[0], min(max(bottom + 16, WINDOW[1]), MAX_HEIGHT))
    try:
        assert driver.save_screenshot(str(path)), path
    finally:
        if down_to:
            set_viewport(driver, *WINDOW)
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


def log_in(driver, live_server, username: str, password: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    open_page(driver, live_server, reverse("admin:login"), "#login-form")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, '#login-form input[type="submit"]').click()
    wait(driver).until(EC.presence_of_element_located((By.ID, "user-tools")))
    # The admin's navigation sidebar closed (it remembers that in localStorage): the pages
    # get the whole width.
    driver.execute_script("window.localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")


# -- the functions and their runs ---------------------------------------------------------------


def define_checkout():
    """A checkout that fails for good at its last step, after a step that succeeded on its
    second attempt, a sleep, a wait that timed out, an invoked run and two parallel branches."""
    calls = {"reserve": 0}

    def reserve_stock():
        calls["reserve"] += 1
        if calls["reserve"] == 1:
            raise ConnectionError("inventory service timed out")
        return {"reserved": 2}

    def charge_card():
        raise RuntimeError("payment gateway: card declined (insufficient funds)")

    @wf.function(id="print-shipping-label", trigger=[])
    def print_shipping_label(ctx: wf.Context) -> dict:
        ctx.step.sleep("wait-for-carrier", "20s")
        return ctx.step.run("print-label", lambda: {"label": "LBL-" + ctx.event.data["order"]})

    @wf.function(id="checkout", name="Checkout", trigger="shop/order.placed", retries=2)
    def checkout(ctx: wf.Context) -> dict:
        order = ctx.step.run("load-order", lambda: {"order": ctx.event.data["order"], "total": 42})
        ctx.step.run("reserve-stock", reserve_stock)
        ctx.step.sleep("cool-off", "30s")
        ctx.step.wait_for_event("fraud-review", event="shop/fraud.cleared", timeout="40s")
        label = ctx.step.invoke(
            "shipping-label", function=print_shipping_label, data={"order": order["order"]}
        )
        ctx.group.parallel(
            (
                lambda: ctx.step.run("email-customer", lambda: "sent"),
                lambda: ctx.step.run("notify-warehouse", lambda: "notified"),
            )
        )
        ctx.step.run("charge-card", charge_card)
        return {"label": label}

    @wf.function(id="nightly-report", trigger="shop/report.requested")
    def nightly_report(ctx: wf.Context) -> dict:
        ctx.step.run("collect", lambda: 3)
        ctx.step.sleep("wait-for-close", "12h")
        return {"orders": 3}

    return checkout


CONTACTS_CSV = "email,name\nada@example.com,Ada Lovelace\nnot-an-email,Bob\n"


def make_runs() -> Run:
    """The failed checkout, a few completed runs, one asleep, one cancelled; a paused function."""
    define_checkout()
    wf.send("shop/order.placed", data={"order": "A-1001"})
    wf.send("order.completed", data={"order_id": "1001", "total": 99, "email": "ada@example.com"})
    wf.send("cart.created", data={"cart_id": "cart-1", "email": "grace@example.com"})
    wf.send("contacts.csv.uploaded", data={"csv": CONTACTS_CSV, "uploaded_by": "owner@example.com"})
    drain(advance_time=True)
    wf.send("shop/report.requested")
    wf.send("shop/report.requested", data={"day": "yesterday"})
    drain()  # both asleep for 12 hours
    wf.cancel(Run.objects.filter(function_id="nightly-report").order_by("queued_at").first().pk)
    wf.pause("invite-waiting-list")
    return Run.objects.get(function_id="checkout")


# -- the test ---------------------------------------------------------------------------------


def test_run_console_in_a_browser(browser, live_server, django_user_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    driver = browser
    django_user_model.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    failed = make_runs()
    assert failed.status == "failed"
    charges = Attempt.objects.filter(run=failed, step_id="charge-card").order_by("number")
    assert [a.outcome for a in charges] == ["retrying", "retrying", "failed"]

    log_in(driver, live_server, "admin", PASSWORD)

    # The runs list: the failed run is there, with its attempts.
    open_page(driver, live_server, reverse("admin:django_workflows_run_changelist"), "#result_list")
    rows = driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == Run.objects.count()
    failed_row = next(r for r in rows if "checkout" in r.text)
    assert "Failed" in failed_row.text
    assert "(4 failed)" in failed_row.find_element(By.CSS_SELECTOR, ".field-attempts_column").text
    screenshot(driver, "admin-runs.png")

    # The functions page: every registered function, with its pause button.
    open_page(
        driver,
        live_server,
        reverse("admin:django_workflows_functionstate_changelist"),
        "table.wf-functions",
    )
    names = [
        e.text
        for e in driver.find_elements(By.CSS_SELECTOR, "table.wf-functions th.field-function a")
    ]
    assert "Checkout" in names
    paused = driver.find_element(By.XPATH, '//tr[th/a[text()="invite-waiting-list"]]')
    assert "paused" in paused.text and paused.find_element(By.CSS_SELECTOR, 'input[value="Resume"]')
    screenshot(driver, "admin-functions.png")

    # The failed run's page: one bar per attempt on the timeline.
    run_url = reverse("admin:django_workflows_run_change", args=[failed.pk])
    open_page(driver, live_server, run_url, "#wf-timeline svg rect.wf-bar")
    assert driver.find_element(By.ID, "wf-status").text == "Failed"

    def attempt_bars(step_id: str) -> list[str]:
        css = f'tr.wf-row[data-row="{step_id}"] rect.wf-bar[data-kind="attempt"]'
        return [
            f"{bar.get_attribute('data-attempt')}:{bar.get_attribute('data-outcome')}"
            for bar in driver.find_elements(By.CSS_SELECTOR, css)
        ]

    assert attempt_bars("charge-card") == ["1:retrying", "2:retrying", "3:failed"]
    assert attempt_bars("reserve-stock") == ["1:retrying", "2:completed"]
    assert attempt_bars("load-order") == ["1:completed"]
    for hollow in ("cool-off", "fraud-review", "shipping-label"):
        bars = driver.find_elements(By.CSS_SELECTOR, f'tr.wf-row[data-row="{hollow}"] rect.wf-bar')
        assert [b.get_attribute("data-kind") for b in bars] == ["wait"], hollow
        assert "wf-hollow" in bars[0].get_attribute("class")
    # Bars are drawn, not only in the markup: the last charge is wider than zero pixels.
    last = driver.find_elements(
        By.CSS_SELECTOR, 'tr.wf-row[data-row="charge-card"] rect[data-attempt="3"]'
    )[0]
    assert last.rect["width"] > 0 and last.is_displayed()
    assert "card declined" in driver.find_element(By.ID, "wf-error").text
    # The failing step's details: its attempts, each with its error.
    driver.find_element(By.CSS_SELECTOR, 'tr.wf-detail[data-row="charge-card"] summary').click()
    attempts = driver.find_elements(
        By.CSS_SELECTOR, 'tr.wf-detail[data-row="charge-card"] tr.wf-attempt'
    )
    wait(driver).until(lambda _: all(row.is_displayed() for row in attempts))
    assert len(attempts) == 3
    assert all("card declined" in row.text for row in attempts)
    screenshot(driver, "admin-run.png", down_to="#wf-timeline")

    # Replay: a POST form; the browser lands on the new run's page (live: it reloads itself).
    driver.find_element(By.CSS_SELECTOR, '.wf-actions input[type="submit"][value="Replay"]').click()
    wait(driver).until(EC.presence_of_element_located((By.ID, "wf-replay-of")))
    replay = Run.objects.get(replay_of=failed)
    assert str(replay.pk) in driver.current_url
    assert driver.current_url.endswith(
        reverse("admin:django_workflows_run_change", args=[replay.pk])
    )
    wait(driver).until(lambda d: d.find_element(By.ID, "wf-replay-of").text == str(failed.pk))
