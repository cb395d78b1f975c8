"""``digitlab serve`` in a real browser: Debian's headless Chromium driven by Selenium.

The application runs under uvicorn on 127.0.0.1 (a free port) over runs trained on the
embedded MNIST sample. The tests draw a "1" (mouse) and a "0" (pen) with pointer events on
the canvas, open a run page, compare two runs, follow a run that is still training and list
1,000 runs. Screenshots go to ``$DIGITLAB_TEST_ARTIFACTS`` (default: pytest's temporary
folder, ``serve-screenshots``). Skipped only when Chromium, chromedriver or Selenium is missing.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from browser_helpers import artifacts_folder, chromium_driver, require_browser
from serve_helpers import draw_digit, train_dead_relu_run, train_runs, write_synthetic_runs

webdriver = require_browser()

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from digitlab.cli import main  # noqa: E402
from digitlab.serve import serve_in_thread  # noqa: E402

WAIT = 20

serving = serve_in_thread  # uvicorn in a thread; yields the base URL


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("runs")
    return root, train_runs(root)


@pytest.fixture(scope="module")
def base_url(trained: tuple[Path, dict[str, str]]) -> Iterator[str]:
    with serving(trained[0]) as url:
        yield url


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    yield from chromium_driver()


@pytest.fixture(autouse=True)
def blank_page_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, leave its page (a live page would go on polling a stopped server and
    log errors into the next test's console) and drain the console log."""
    yield
    if "driver" in request.fixturenames:
        drv = request.getfixturevalue("driver")
        drv.get("about:blank")
        drv.get_log("browser")


def wait(drv, condition, message: str):
    """Wait for ``condition``; elements re-rendered meanwhile (live pages) are looked up again."""
    return WebDriverWait(
        drv, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: condition(d), message)


def screenshot(drv, path: Path) -> None:
    """Whole page: the window is made as tall as the document first."""
    height = drv.execute_script("return document.documentElement.scrollHeight")
    drv.set_window_size(1400, min(max(1000, height + 120), 6000))
    drv.save_screenshot(str(path))
    drv.set_window_size(1400, 1000)


def js_errors(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def choose_checkpoints(drv, ids: list[str]) -> None:
    for box in drv.find_elements(By.CSS_SELECTOR, "#models input"):
        if (box.get_attribute("value") in ids) != box.is_selected():
            box.click()


def predicted(drv) -> str:
    """The first checkpoint's predicted class on the page ("" before any), read atomically."""
    return drv.execute_script(
        "const e = document.querySelector('#results .pred'); return e ? e.dataset.label : ''"
    )


def uploaded_png(drv) -> bytes:
    """The image the page sent with its last prediction request."""
    url = drv.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const r = new FileReader(); r.onload = () => done(r.result);"
        "r.readAsDataURL(window.digitlabLastUpload);"
    )
    return base64.b64decode(url.split(",", 1)[1])


# ---------------------------------------------------------------------------------- tests
def test_draw_one_and_zero_gives_the_class_of_digitlab_predict(
    driver, base_url, trained, artifacts, tmp_path
) -> None:
    root, ids = trained
    driver.get(base_url + "/#/draw")
    pad = wait(driver, lambda d: d.find_element(By.ID, "pad"), "no drawing pad")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#models input"), "no checkpoints")
    choose_checkpoints(driver, [ids["mlp"], ids["softmax"]])

    # "1" with the mouse: a slightly slanted vertical stroke (offsets from the pad's centre)
    chain = ActionChains(driver, duration=10)
    chain.move_to_element_with_offset(pad, 12, -95).click_and_hold()
    for _ in range(19):
        chain.move_by_offset(-1, 10)
    chain.release().perform()
    wait(driver, lambda d: predicted(d) == "1", f"expected 1, page says {predicted(driver)!r}")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#results .model")) == 2
    seen = driver.execute_script(
        "const c = document.getElementById('seen');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)"
        ".filter((v, i) => i % 4 == 0 && v > 128).length"
    )
    assert 20 < seen < 300  # the 28x28 image the model sees has a stroke of ink
    screenshot(driver, artifacts / "draw-1.png")
    images = tmp_path / "drawn"
    images.mkdir()
    (images / "a-one.png").write_bytes(uploaded_png(driver))
    from PIL import Image

    with Image.open(images / "a-one.png") as sent:  # the page's own grey PNG encoder
        assert (sent.format, sent.mode, sent.size) == ("PNG", "L", (140, 140))
        ink = int((np.asarray(sent) < 128).sum())
        assert 0 < ink < 140 * 140 // 4

    # "0" with a pen: a closed loop
    driver.find_element(By.ID, "clear").click()
    assert predicted(driver) == ""
    pen = PointerInput(interaction.POINTER_PEN, "pen")
    actions = ActionBuilder(driver, mouse=pen, duration=10)
    import math

    points = [(55 * math.sin(2 * math.pi * k / 36), -85 * math.cos(2 * math.pi * k / 36))
              for k in range(38)]  # fmt: skip
    actions.pointer_action.move_to(pad, round(points[0][0]), round(points[0][1]))
    actions.pointer_action.pointer_down(pressure=0.6)
    for x, y in points[1:]:
        actions.pointer_action.move_to(pad, round(x), round(y), pressure=0.6)
    actions.pointer_action.pointer_up()
    actions.perform()
    wait(driver, lambda d: predicted(d) == "0", f"expected 0, page says {predicted(driver)!r}")
    (images / "b-zero.png").write_bytes(uploaded_png(driver))
    screenshot(driver, artifacts / "draw-0.png")

    # an image file instead of a drawing (the file input; dropping a file takes the same path)
    upload = tmp_path / "photo-of-a-one.png"
    upload.write_bytes(draw_digit(1, size=500))
    driver.find_element(By.ID, "file").send_keys(str(upload))
    wait(driver, lambda d: predicted(d) == "1", f"expected 1, page says {predicted(driver)!r}")
    assert js_errors(driver) == []

    # the same images through `digitlab predict`
    out = tmp_path / "pred.csv"
    checkpoint = root / ids["mlp"] / "checkpoint.npz"
    assert main(["predict", str(checkpoint), str(images), "-o", str(out)]) == 0
    assert [row.split(",")[1] for row in out.read_text().splitlines()[1:]] == ["1", "0"]


def test_run_page_draws_curves_weights_and_confusion(driver, base_url, trained, artifacts) -> None:
    _, ids = trained
    driver.get(f"{base_url}/#/run?id={ids['softmax']}")
    for chart, n in (("loss", 3), ("acc", 3), ("lr", 1), ("norm", 1)):
        sel = f"#chart-{chart} svg path.line"
        wait(driver, lambda d, s=sel, n=n: len(d.find_elements(By.CSS_SELECTOR, s)) == n, sel)
        for path in driver.find_elements(By.CSS_SELECTOR, sel):
            assert path.get_attribute("d").count("L") >= 4  # five evaluations: a drawn line
    wait(
        driver,
        lambda d: d.execute_script(
            "const im = Array.from(document.querySelectorAll('#weights img'));"
            "return im.length == 10 && im.every(i => i.complete && i.naturalWidth == 28)"
        ),
        "weight images did not load",
    )
    ActionChains(driver).move_to_element(
        driver.find_element(By.CSS_SELECTOR, "#chart-acc svg")
    ).perform()
    tip = driver.find_element(By.ID, "tooltip")
    wait(driver, lambda d: tip.is_displayed() and "validation" in tip.text, "no hover read-out")
    assert tip.text.startswith("epoch ")
    driver.save_screenshot(str(artifacts / "run-hover.png"))
    cell = wait(
        driver, lambda d: d.find_element(By.CSS_SELECTOR, "#confusion-table td.off"), "no cell"
    )
    total = sum(
        int(td.text or 0) for td in driver.find_elements(By.CSS_SELECTOR, "#confusion-table td")
    )
    assert total == 1000  # the sample's test split
    cell.click()
    wait(
        driver,
        lambda d: d.execute_script(
            "const i = document.querySelector('#examples img');"
            "return i && i.complete && i.naturalWidth > 0"
        ),
        "misclassified examples did not load",
    )
    # a linear model's per-layer statistics: W and b (no hidden layer, no heat map)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#layer-norms svg path.line")) == 2
    assert len(driver.find_elements(By.CSS_SELECTOR, "#layer-ratio svg path.line")) == 1
    assert not driver.find_elements(By.CSS_SELECTOR, "svg.heatmap")
    screenshot(driver, artifacts / "run.png")
    assert js_errors(driver) == []


def test_compare_two_runs(driver, base_url, trained, artifacts) -> None:
    _, ids = trained
    driver.get(base_url + "/#/runs")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    rows = "#runs-table tbody tr"
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 3, "rows")
    for rid in (ids["mlp"], ids["softmax"]):
        driver.find_element(By.CSS_SELECTOR, f'#runs-table input[value="{rid}"]').click()
    screenshot(driver, artifacts / "runs.png")
    driver.find_element(By.ID, "compare-btn").click()
    for key in ("val_acc", "test_acc", "val_loss", "train_loss"):
        sel = f"#cmp-{key} svg path.line"
        wait(driver, lambda d, s=sel: len(d.find_elements(By.CSS_SELECTOR, s)) == 2, sel)
    rows = {
        tr.find_elements(By.TAG_NAME, "td")[0].text: tr
        for tr in driver.find_elements(By.CSS_SELECTOR, "#diff-table tr.diff")
    }
    assert {"model", "lr", "epochs"} <= set(rows)
    assert [td.text for td in rows["model"].find_elements(By.TAG_NAME, "td")[1:]] == [
        "mlp",
        "softmax",
    ]
    screenshot(driver, artifacts / "compare.png")
    assert js_errors(driver) == []


def test_a_run_in_progress_updates_live(driver, trained, tmp_path, artifacts) -> None:
    src = trained[0] / trained[1]["softmax"]
    run = tmp_path / "runs" / "live" / "now"
    run.mkdir(parents=True)
    shutil.copy(src / "config.toml", run)
    lines = (src / "history.csv").read_text().splitlines(keepends=True)
    (run / "history.csv").write_text("".join(lines[:3]))
    with serving(tmp_path / "runs") as url:
        driver.get(f"{url}/#/run?id=live/now")
        badge = wait(
            driver, lambda d: d.find_element(By.CSS_SELECTOR, "#run-status .badge"), "badge"
        )
        assert badge.text == "running"
        sel = "#chart-loss svg path.line"
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, sel), "no loss curve")
        before = driver.execute_script(f"return document.querySelector('{sel}').getAttribute('d')")
        assert before.count("L") == 1  # two evaluations so far
        with open(run / "history.csv", "a") as f:
            f.write("".join(lines[3:]))
        wait(
            driver,
            lambda d: d.find_element(By.CSS_SELECTOR, sel).get_attribute("d").count("L") == 4,
            "the curve did not grow",
        )
        stats = driver.execute_script("return document.getElementById('run-stats').innerText")
        assert "5\nevaluations" in stats
        screenshot(driver, artifacts / "live.png")
        shutil.copy(src / "metrics.json", run)
        wait(
            driver,
            lambda d: d.find_element(By.CSS_SELECTOR, "#run-status .badge").text == "finished",
            "the finished run was not noticed",
        )
    assert js_errors(driver) == []


def test_a_thousand_runs_render(driver, tmp_path, artifacts) -> None:
    ids = write_synthetic_runs(tmp_path / "runs", 1000)
    with serving(tmp_path / "runs") as url:
        driver.get(url + "/#/runs")
        wait(
            driver,
            lambda d: d.execute_script("return document.body.dataset.runsRenderMs"),
            "the table never rendered",
        )
        timing = driver.execute_script(
            "return {table_ms: +document.body.dataset.runsRenderMs, since_navigation_ms: "
            "+document.body.dataset.runsShownAt,"
            " rows: document.querySelectorAll('#runs-table tbody tr').length}"
        )
        assert timing["rows"] == 1000
        (artifacts / "runs-1000-timing.json").write_text(json.dumps(timing, indent=1))
        print(f"1,000 runs: {timing}")
        box = driver.find_element(By.ID, "filter")
        box.send_keys(ids[42].split("/")[1])
        rows = driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
        assert [r.get_attribute("data-id") for r in rows] == [ids[42]]
        box.clear()
        box.send_keys(" ")  # an input event with an empty filter
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="test_acc"]').click()
        first = driver.find_element(By.CSS_SELECTOR, "#runs-table tbody tr")
        root = tmp_path / "runs"
        best = max(json.loads((root / i / "metrics.json").read_text())["test_acc"] for i in ids)
        acc = first.find_elements(By.TAG_NAME, "td")[9].text
        assert acc == f"{100 * best:.2f}%"
        screenshot(driver, artifacts / "runs-1000.png")


# ---------------------------------------------------------------------------------- inside
def count(drv, selector: str) -> int:
    return len(drv.find_elements(By.CSS_SELECTOR, selector))


def test_run_page_shows_layer_charts_and_a_dead_relu_badge(driver, trained, tmp_path, artifacts):
    root = tmp_path / "runs"
    shutil.copytree(trained[0] / trained[1]["mlp"], root / "healthy")
    dead = train_dead_relu_run(root)  # a real run: first-layer biases at -10 before training
    with serving(root) as url:
        driver.get(f"{url}/#/run?id={dead}")
        warning = wait(
            driver,
            lambda d: d.find_element(By.CSS_SELECTOR, '.layer-warning[data-kind="dead"]'),
            "no dead-unit badge",
        )
        assert "hidden layer 1: 100% dead units" in warning.text
        assert "learning rate" in warning.text and "biases" in warning.text
        assert count(driver, '.layer-warning[data-kind="low"]') == 2  # nothing moves at all
        wait(driver, lambda d: count(d, "#layer-norms svg path.line") == 4, "norm curves")
        assert count(driver, "#layer-units svg path.line") == 1
        assert count(driver, "svg.heatmap rect") == 2 * 16  # two evaluations x 16 bins
        screenshot(driver, artifacts / "layers-dead-relu.png")

        driver.get(f"{url}/#/run?id=healthy")
        wait(driver, lambda d: count(d, "#layer-ratio svg path.line") == 2, "ratio curves")
        assert "No layer warnings" in driver.find_element(By.ID, "layer-warnings").text
        assert count(driver, "svg.heatmap rect") == 6 * 16
        guides = count(driver, "#layer-ratio svg line.guide")
        assert guides == 2  # the 1e-4 and 1e-1 bounds drawn on the log axis
        screenshot(driver, artifacts / "layers-healthy.png")

        driver.get(f"{url}/#/compare?ids=healthy,{dead}")
        wait(driver, lambda d: count(d, "#cmp-layer-units svg path.line") == 2, "compare units")
        badges = driver.find_elements(By.CSS_SELECTOR, "#diff-table .badge.warn")
        assert any("100% dead" in b.text for b in badges)
        screenshot(driver, artifacts / "layers-compare.png")
    assert js_errors(driver) == []


OVERLAY_PIXELS = """
const c = document.querySelector('canvas.overlay');
const s = document.getElementById('seen');
if (!c || !c.width) return null;
const o = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const g = s.getContext('2d').getImageData(0, 0, 28, 28).data;
const out = [];
for (let i = 0; i < o.length; i += 4) out.push([Math.abs(o[i] - o[i + 2]), g[i]]);
return out;
"""


def test_draw_shows_hidden_layers_and_a_saliency_overlay(driver, base_url, trained, artifacts):
    _, ids = trained
    driver.get(base_url + "/#/draw")
    pad = wait(driver, lambda d: d.find_element(By.ID, "pad"), "no drawing pad")
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#models input"), "no checkpoints")
    choose_checkpoints(driver, [ids["mlp"]])
    driver.find_element(By.ID, "clear").click()
    chain = ActionChains(driver, duration=10)
    chain.move_to_element_with_offset(pad, 12, -95).click_and_hold()
    for _ in range(19):
        chain.move_by_offset(-1, 10)
    chain.release().perform()
    wait(driver, lambda d: predicted(d) == "1", f"expected 1, page says {predicted(driver)!r}")
    wait(driver, lambda d: count(d, ".hidden-layer .units canvas") == 12, "top hidden units")
    layer = driver.find_element(By.CSS_SELECTOR, ".hidden-layer").text
    assert "layer 1" in layer and "64 relu units" in layer
    painted = driver.execute_script(
        "return Array.from(document.querySelectorAll('.hidden-layer .units canvas')).map(c =>"
        " c.width * c.height ? Array.from(c.getContext('2d').getImageData(0, 0, c.width,"
        " c.height).data).filter((v, i) => i % 4 == 1 && v < 200).length : 0)"
    )
    assert all(n > 20 for n in painted)  # each unit's 28x28 input weights are drawn
    pixels = wait(driver, lambda d: d.execute_script(OVERLAY_PIXELS), "no saliency overlay")
    colour = np.array([p[0] for p in pixels])
    ink = np.array([p[1] for p in pixels])
    assert (colour > 40).sum() > 10  # the overlay is drawn
    assert (ink[colour > 40] > 0).all()  # coloured only where the digit has ink
    assert (ink[np.argsort(-colour)[:10]] > 128).all()  # the strongest pixels on the stroke
    Select(driver.find_element(By.ID, "cls")).select_by_visible_text("7")
    wait(driver, lambda d: count(d, 'canvas.overlay[data-class="7"]') == 1, "class 7 saliency")
    assert count(driver, "canvas.overlay") == 2 and count(driver, "canvas.gradient") == 2
    screenshot(driver, artifacts / "draw-inside.png")
    assert js_errors(driver) == []
