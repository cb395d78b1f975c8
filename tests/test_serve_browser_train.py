"""Training from the browser in a real browser (Debian's headless Chromium driven by Selenium):
``digitlab serve --allow-train`` under uvicorn, the page opened with the session token, a run
started from the generated form on the embedded MNIST sample, its curve watched as it grows,
stopped, resumed with a new learning rate and finished; its checkpoint equals, bit for bit,
``digitlab train`` + ``digitlab resume`` with the same settings. Skipped only when Chromium,
chromedriver or Selenium is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_helpers import chromium_driver, require_browser
from train_helpers import LONG_RUN, MORE_EPOCHS, RESUME, TOKEN, assert_same_arrays, cli_reference

webdriver = require_browser()

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from digitlab.checkpoint import load_checkpoint  # noqa: E402
from digitlab.serve import serve_in_thread  # noqa: E402

WAIT = 60


@pytest.fixture
def driver() -> Iterator[object]:
    yield from chromium_driver()


def wait(drv, condition, message: str, timeout: float = WAIT):
    return WebDriverWait(
        drv, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: condition(d), message)


def js(drv, script: str):
    return drv.execute_script(script)


def data_of(drv, element_id: str, key: str) -> str:
    """``data-<key>`` of an element ("" while it is absent)."""
    script = f"const e = document.getElementById('{element_id}'); return e ? e.dataset.{key} : ''"
    return js(drv, script) or ""


def job_state(drv) -> str:
    return data_of(drv, "job-state", "state")


def live_points(drv) -> int:
    return int(data_of(drv, "train-live", "points") or 0)


def click(drv, element_id: str) -> None:
    """Click a button, scrolled to the middle of the window (clear of the sticky top bar)."""
    el = drv.find_element(By.ID, element_id)
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    el.click()


def fill(drv, values: dict[str, str]) -> None:
    for name, value in values.items():
        el = drv.find_element(By.ID, f"set-{name}")
        if el.tag_name == "select":
            Select(el).select_by_visible_text(value)
        else:
            el.clear()
            el.send_keys(value)


def test_start_watch_stop_resume_from_the_page_equals_the_command_line(
    driver, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    with serve_in_thread(root, allow_train=True, token=TOKEN) as url:
        driver.get(f"{url}/?token={TOKEN}#/train")
        wait(driver, lambda d: d.find_elements(By.ID, "set-lr"), "no generated form")
        assert "token" not in driver.current_url  # kept in the tab, out of the address bar
        assert js(driver, "return sessionStorage.getItem('digitlab-token')") == TOKEN
        wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, 'nav a[data-nav="train"]')
             .is_displayed(), "the Train link stays hidden")  # fmt: skip
        assert driver.find_element(By.ID, "set-model").tag_name == "select"
        assert driver.find_element(By.ID, "set-augment").get_attribute("type") == "checkbox"
        assert driver.find_element(By.ID, "set-lr").get_attribute("type") == "number"

        driver.find_element(By.ID, "train-name").send_keys("browser")
        fill(driver, {**LONG_RUN, "lr": "-1"})  # refused as `digitlab train --lr -1` is
        click(driver, "train-start")
        error = wait(driver, lambda d: d.find_element(By.ID, "train-error").text, "no error")
        assert error == "option --lr '-1': expected a finite number (> 0, <= 1e+06)"
        assert not root.exists() or not any(root.iterdir())

        fill(driver, {"lr": LONG_RUN["lr"]})
        click(driver, "train-start")
        wait(driver, lambda d: job_state(d) == "running" and live_points(d) > 0, "no live curve")
        seen = [live_points(driver)]
        for _ in range(2):  # the curve grows while the page is watched
            wait(driver, lambda d: live_points(d) > seen[-1], "the curve stopped growing")
            seen.append(live_points(driver))
        assert job_state(driver) == "running" and seen[0] < seen[1] < seen[2]
        assert driver.find_elements(By.CSS_SELECTOR, "#train-live svg.chart path.line")

        click(driver, "train-stop")
        wait(driver, lambda d: job_state(d) == "stopped", "the run did not stop")
        first = driver.find_element(By.ID, "job-link").get_attribute("data-run")
        stopped = root / first / "checkpoint.npz"
        step = load_checkpoint(stopped)[1]["progress"]["step"]
        wait(driver, lambda d: Select(d.find_element(By.ID, "resume-id"))
             .first_selected_option.get_attribute("value") == first, "run not offered")  # fmt: skip

        for key, value in RESUME.items():
            driver.find_element(By.ID, f"resume-{key}").send_keys(value)
        driver.find_element(By.ID, "resume-more").send_keys(str(MORE_EPOCHS))
        click(driver, "train-resume")
        wait(driver, lambda d: job_state(d) == "finished", "the resumed run did not finish")
        second = driver.find_element(By.ID, "job-link").get_attribute("data-run")
        assert second != first and second.startswith("browser/")
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert all("/api/train/start" in e and "400" in e for e in errors), errors
        shots = os.environ.get("DIGITLAB_TEST_ARTIFACTS")
        if shots:
            driver.save_screenshot(str(Path(shots) / "train.png"))

    reference, reference_stopped = cli_reference(tmp_path / "cli", step)
    assert_same_arrays(stopped, reference_stopped)
    assert assert_same_arrays(root / second / "checkpoint.npz", reference) >= 3
