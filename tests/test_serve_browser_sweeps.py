"""The sweep and experiment pages of ``digitlab serve`` in Debian's headless Chromium.

A 4 λ × 3 seed sweep of synthetic finished runs: the parallel-coordinates chart draws one
polyline per run, the scatter one mean ± sd marker per λ at the group's numbers and on a log
axis that the toggle makes linear, the EMA slider redraws the group curves; an experiment
folder made by the experiments engine on the embedded sample shows the marks of the
``report.md`` that the report module writes for it. Skipped only when Chromium, chromedriver
or Selenium is missing (as tests/test_serve_browser.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from browser_helpers import artifacts_folder, chromium_driver, require_browser
from sweep_helpers import (
    LAMBDAS,
    SEEDS,
    make_experiment,
    markdown_table,
    run_values,
    write_lambda_sweep,
)

webdriver = require_browser()

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from digitlab.serve import serve_in_thread  # noqa: E402

WAIT = 20


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    yield from chromium_driver()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple, str]]:
    """The λ × seed sweep and the reported experiment ``tiny`` under one runs root."""
    from digitlab.report import write_report

    runs = tmp_path_factory.mktemp("runs")
    ids = write_lambda_sweep(runs)
    make_experiment(runs)
    write_report(runs)
    return runs, ids


@pytest.fixture(scope="module")
def url(root) -> Iterator[str]:
    with serve_in_thread(root[0]) as base:
        yield base


def wait(drv, condition, message: str):
    return WebDriverWait(
        drv, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: condition(d), message)


def js(drv, script: str):
    return drv.execute_script(script)


def attrs(drv, selector: str, names: list[str]) -> list[dict[str, str]]:
    return js(
        drv,
        f"return Array.from(document.querySelectorAll({json.dumps(selector)}))"
        f".map(e => Object.fromEntries({json.dumps(names)}.map(n => [n, e.getAttribute(n)])))",
    )


def js_errors(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def attr(drv, element_id: str, name: str) -> str | None:
    return drv.find_element(By.ID, element_id).get_attribute(name)


def wait_attr(drv, element_id: str, name: str, value: str) -> None:
    wait(drv, lambda d: attr(d, element_id, name) == value, f"#{element_id} {name} != {value}")


def cell_texts(drv, rows: str) -> list[list[str]]:
    """The text of each cell of the table rows ``rows`` (a selector)."""
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in drv.find_elements(By.CSS_SELECTOR, rows)
    ]


def fetch_text(drv, url: str) -> str:
    """GET ``url`` from the page (same origin, its cookies and policy)."""
    return js(drv, f"const r = new XMLHttpRequest(); r.open('GET', {json.dumps(url)}, false);"
                   " r.send(); return r.responseText")  # fmt: skip


def set_slider(drv, selector: str, value: float) -> None:
    """Move a range input the way a drag does: set its value, fire ``input``."""
    js(drv, f"const s = document.querySelector({json.dumps(selector)}); s.value = '{value}';"
            " s.dispatchEvent(new Event('input', {bubbles: true}))")  # fmt: skip


def test_sweep_page_draws_every_run_and_each_lambdas_mean_and_sd(driver, url, root, artifacts):
    runs, ids = root
    driver.get(url + "/#/sweep?prefix=l2-sweep")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "g.sc-mean"), "no scatter markers")
    # parallel coordinates: the axes are the differing settings, then the metric; 12 lines
    svg = driver.find_element(By.ID, "sweep-parallel")
    assert svg.get_attribute("data-axes") == "l2,seed,test_acc"
    lines = attrs(driver, "path.pc-line", ["data-id", "d"])
    assert sorted(x["data-id"] for x in lines) == sorted(ids.values())
    assert all(x["d"].count("L") == 2 for x in lines)  # through all three axes
    axes = attrs(driver, "g.pc-axis", ["data-name", "data-scale"])
    assert {a["data-name"]: a["data-scale"] for a in axes} == {
        "l2": "log", "seed": "linear", "test_acc": "linear"}  # fmt: skip
    # scatter: one marker per λ at the mean ± sample sd of its three seeds
    names = ["data-x", "data-mean", "data-sd", "data-n", "data-px", "data-py"]
    marks = attrs(driver, "g.sc-mean", names)
    assert [float(m["data-x"]) for m in marks] == list(LAMBDAS)
    for m, lam in zip(marks, LAMBDAS, strict=True):
        tests = np.array([run_values(lam, s)[0] for s in SEEDS])
        assert float(m["data-mean"]) == pytest.approx(tests.mean(), abs=1e-12)
        assert float(m["data-sd"]) == pytest.approx(tests.std(ddof=1), abs=1e-12)
        assert m["data-n"] == "3"
    px = np.array([float(m["data-px"]) for m in marks])
    py = np.array([float(m["data-py"]) for m in marks])
    means = np.array([float(m["data-mean"]) for m in marks])
    assert np.all(np.diff(px) > 0) and np.ptp(np.diff(px)) < 1.0  # decades evenly spaced: log
    assert np.all(np.sign(np.diff(py)) == -np.sign(np.diff(means)))  # higher mean, higher up
    assert attr(driver, "sweep-scatter", "data-xscale") == "log"
    assert len(driver.find_elements(By.CSS_SELECTOR, "circle.sc-run")) == 12
    screenshot = artifacts / "sweep-12.png"
    driver.set_window_size(1400, 2000)
    driver.save_screenshot(str(screenshot))
    driver.set_window_size(1400, 1000)
    # the log toggle makes the x axis linear: 0.1 is then far from the three small λ
    driver.find_element(By.ID, "sw-logx").click()
    wait_attr(driver, "sweep-scatter", "data-xscale", "linear")
    px = np.array([float(m["data-px"]) for m in attrs(driver, "g.sc-mean", ["data-px"])])
    assert px[3] - px[2] > 5 * (px[2] - px[0])
    # the runs table and the CSV link hold the twelve runs
    assert len(driver.find_elements(By.CSS_SELECTOR, "#sweep-table tbody tr")) == 12
    csv = fetch_text(driver, attr(driver, "sweep-csv", "href"))
    assert len(csv.strip().splitlines()) == 13
    assert csv.startswith("id,l2,seed,status,group,test_acc")
    assert js_errors(driver) == []


def test_smoothing_and_log_axis_redraw_the_group_curves(driver, url, root) -> None:
    driver.get(url + "/#/sweep?prefix=l2-sweep")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "path.cv-mean")) == 4, "no curves")
    raw = [p["d"] for p in attrs(driver, "path.cv-mean", ["d"])]
    assert all(d.count("L") == 4 for d in raw)  # five epochs each
    set_slider(driver, "#sw-ema", 0.9)
    wait_attr(driver, "sweep-curves", "data-ema", "0.9")
    smooth = [p["d"] for p in attrs(driver, "path.cv-mean", ["d"])]
    assert all(a != b for a, b in zip(raw, smooth, strict=True))
    assert [d.split("L")[0] for d in raw] == [d.split("L")[0] for d in smooth]  # debiased start
    set_slider(driver, "#sw-ema", 0)
    wait(driver, lambda d: [p["d"] for p in attrs(d, "path.cv-mean", ["d"])] == raw, "not undone")
    assert attr(driver, "sweep-curves", "data-yscale") == "linear"
    driver.find_element(By.ID, "sw-logcurve").click()
    wait_attr(driver, "sweep-curves", "data-yscale", "log")
    assert js_errors(driver) == []


def test_sweep_picker_offers_folders_and_the_selected_runs(driver, url, root) -> None:
    runs, ids = root
    driver.get(url + "/#/runs")
    picked = [ids[(0.01, s)] for s in SEEDS]
    js(driver, f"sessionStorage.setItem('selected', {json.dumps(json.dumps(picked))})")
    driver.get(url + "/#/sweep")
    driver.refresh()  # the selection is read when the page loads
    link = wait(driver, lambda d: d.find_elements(By.ID, "sweep-selected"), "no selected link")[0]
    folders = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#sweep-folders a")]
    assert folders == ["l2-sweep", "tiny"]
    link.click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "path.pc-line"), "no sweep")
    assert sorted(x["data-id"] for x in attrs(driver, "path.pc-line", ["data-id"])) == picked
    assert attr(driver, "sweep-parallel", "data-axes") == "seed,test_acc"
    js(driver, "sessionStorage.clear()")


def test_experiment_page_shows_the_marks_of_report_md(driver, url, root, artifacts) -> None:
    runs, _ = root
    md = (runs / "report.md").read_text()
    driver.get(url + "/#/experiments")
    row = wait(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#experiments-table tbody tr"), "no list"
    )
    assert len(row) == 1
    summary = markdown_table(md, "## Summary")
    shown = cell_texts(driver, "#experiments-table tbody tr")
    assert [r[:-1] for r in shown] == summary  # the report's summary row, cell for cell
    assert "2/4" in summary[0] and shown[0][-1] == "✓≈✗?"  # and each published row's mark
    row[0].find_element(By.CSS_SELECTOR, "a[href^='#/experiment']").click()
    wait(driver, lambda d: d.find_elements(By.ID, "exp-published-table"), "no experiment page")
    assert cell_texts(driver, "#exp-summary-table tbody tr") == summary
    shown = cell_texts(driver, "#exp-published-table tbody tr")
    assert shown == markdown_table(md, "### Published vs reproduced")
    marks = attrs(driver, "#exp-published-table .mark", ["data-status"])
    assert [m["data-status"] for m in marks] == ["meets", "within", "outside", "missing"]
    members = [row[:-1] for row in cell_texts(driver, "#exp-members tbody tr")]  # less "runs"
    assert members == markdown_table(md, "### Settings")
    loaded = "return Array.from(document.querySelectorAll('img.exp-figure'))" \
        ".map(i => i.complete && i.naturalWidth > 0)"
    wait(driver, lambda d: js(d, loaded) == [True, True], "figures not loaded")
    kinds = [f["data-kind"] for f in attrs(driver, ".exp-figures figure", ["data-kind"])]
    assert kinds == ["curves", "sweep"]
    driver.set_window_size(1400, 2400)
    driver.save_screenshot(str(artifacts / "experiment-tiny.png"))
    driver.set_window_size(1400, 1000)
    link = driver.find_element(By.CSS_SELECTOR, "#exp-members tbody tr a[href^='#/run?id=']")
    assert link.get_attribute("href").endswith("#/run?id=tiny%2Fl2-0.0")
    link.click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-loss svg"), "no run page")
    assert driver.find_element(By.TAG_NAME, "h1").text == "tiny/l2-0.0"
    assert js_errors(driver) == []


def test_run_page_charts_have_a_log_toggle_and_smoothing(driver, url, root) -> None:
    runs, ids = root
    driver.get("about:blank")  # a fresh page: nothing left of the previous test's run page
    driver.get(url + f"/#/run?id={ids[(0.01, 2)]}")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-acc path.line"), "no chart")
    before = attrs(driver, "#chart-acc path.line", ["d"])[0]["d"]
    tick_js = (
        "return Array.from(document.querySelectorAll('#chart-loss .axis text'), t => t.textContent)"
    )
    ticks = js(driver, tick_js)
    driver.find_element(By.CSS_SELECTOR, "#chart-loss .chart-log").click()
    wait(driver, lambda d: attrs(d, "#chart-loss .chart-tools", ["data-log"])[0]["data-log"] == "1",
         "no log axis")  # fmt: skip
    assert js(driver, tick_js) != ticks
    js(driver, "const s = document.querySelector('#chart-acc .chart-ema'); s.value = '0.8';"
               " s.dispatchEvent(new Event('change', {bubbles: true}))")  # fmt: skip
    ema = attrs(driver, "#chart-acc .chart-tools", ["data-ema"])
    assert ema == [{"data-ema": "0.8"}]
    after = attrs(driver, "#chart-acc path.line", ["d"])[0]["d"]
    assert after != before and after.split("L")[0] == before.split("L")[0]
    assert js_errors(driver) == []


def test_markup_in_settings_is_shown_as_text(driver, tmp_path) -> None:
    markup = '<img src=x onerror="document.body.dataset.pwned=1">'
    for i in range(2):
        run = tmp_path / "hostile" / f"r{i}"
        run.mkdir(parents=True)
        (run / "config.toml").write_text(f"note = {json.dumps(markup + str(i))}\nseed = {i}\n")
        (run / "metrics.json").write_text(json.dumps({"test_acc": 0.5 + i / 10}))
    with serve_in_thread(tmp_path) as base:
        driver.get("about:blank")
        driver.get(base + "/#/sweep?prefix=hostile")
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "path.pc-line"), "no sweep")
        assert driver.find_elements(By.CSS_SELECTOR, "#view img") == []
        assert js(driver, "return document.body.dataset.pwned") is None
        assert markup + "1" in driver.find_element(By.ID, "sweep-table").text
        ticks = js(driver, "return Array.from(document.querySelectorAll("
                           "'g.pc-axis[data-name=note] text'), t => t.textContent)")  # fmt: skip
        assert ticks[:2] == [markup + "0", markup + "1"]
