"""Speed of ``digitlab serve``: the runs table and sweeps for 2,000 runs, the prediction round trip.

    PYTHONPATH=src python benchmarks/serve.py [--threads 2] [--rounds 50] [--no-browser]

Trains three small runs on the embedded MNIST sample and writes 2,000 (``--runs``) synthetic
finished run folders (50 per folder) into a temporary folder, serves both with uvicorn on
127.0.0.1 (a real socket), and measures with httpx:

- ``/api/runs`` over 2,000 runs: the first scan (every file read) and later requests
  (mtime caches), server time and HTTP round trip;
- ``/api/sweep`` over one folder of 50 runs and over all 2,000 (first and later requests), and
  the folder's ``/api/sweep/curves``;
- ``POST /api/predict``: a digit as the draw page sends it (a 140x140 grey PNG), per
  checkpoint kind and for the three checkpoints side by side, and a 280x280 RGB file (median
  and 95th percentile of ``--rounds``);
- with Chromium and Selenium present, in the browser: the runs page for 2,000 runs (time to
  the rendered table since navigation, and the table rendering alone), and the sweep page of
  one folder and of all 2,000 runs (time to the drawn charts and table since navigation).

NumPy's threads are limited to ``--threads`` (threadpoolctl). Results go to
``benchmarks/serve-results.json``. Not part of the unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from serve_helpers import draw_digit, train_runs, write_synthetic_runs  # noqa: E402


def ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "median_ms": round(1e3 * statistics.median(values), 2),
        "p95_ms": round(1e3 * values[min(len(values) - 1, int(0.95 * len(values)))], 2),
        "best_ms": round(1e3 * values[0], 2),
    }


def _chromium():
    """A headless Chromium driver, or None without Chromium, chromedriver or Selenium."""
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        return None
    try:
        from selenium import webdriver
    except ImportError:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(
        service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options
    )


def _page(drv, url: str, ready: str, read: str, tries: int = 3) -> list:
    """Load ``url`` afresh ``tries`` times; after the dataset key ``ready`` is set, the values
    the script ``read`` returns (its first one: ms since navigation), the fastest try."""
    from selenium.webdriver.support.ui import WebDriverWait

    out = []
    for _ in range(tries):
        drv.get("about:blank")
        drv.get(url)
        WebDriverWait(drv, 60, poll_frequency=0.02).until(
            lambda d: d.execute_script(f"return document.body.dataset.{ready}")
        )
        out.append(drv.execute_script(read))
    return min(out, key=lambda o: o[0])


def browser_render(url: str, n: int, folder: str) -> dict[str, object] | None:
    """The runs page with ``n`` runs, and the sweep page of one folder and of every run."""
    drv = _chromium()
    if drv is None:
        return None
    try:
        best = _page(
            drv, url + "/#/runs", "runsRenderMs",
            "const api = performance.getEntriesByType('resource')"
            ".find(e => e.name.endsWith('/api/runs'));"
            "const b = document.body.dataset;"
            "return [+b.runsShownAt, +b.runsRenderMs,"
            " document.querySelectorAll('#runs-table tbody tr').length,"
            " api.startTime, api.responseEnd - api.startTime]",
        )  # fmt: skip
        assert best[2] == n, best
        out: dict[str, object] = {
            "since_navigation_ms": round(best[0], 1),
            "page_start_to_api_request_ms": round(best[3], 1),
            "api_runs_fetch_ms": round(best[4], 1),
            "table_render_ms": round(best[1], 1),
        }
        for name, prefix in ((f"sweep_page_{folder}", folder), ("sweep_page_all", "")):
            shown = _page(
                drv, f"{url}/#/sweep?prefix={prefix}", "sweepShownAt",
                "const api = performance.getEntriesByType('resource')"
                ".find(e => e.name.includes('/api/sweep?'));"
                "return [+document.body.dataset.sweepShownAt,"
                " document.querySelectorAll('path.pc-line').length,"
                " api.responseEnd - api.startTime]",
            )  # fmt: skip
            out[name] = {"since_navigation_ms": round(shown[0], 1), "polylines": shown[1],
                         "api_sweep_fetch_ms": round(shown[2], 1)}  # fmt: skip
        return out
    finally:
        drv.quit()


def sweep_api(client, folder: str) -> dict[str, object]:
    """``/api/sweep`` over one folder and over every run (first request: every config.toml
    and metrics.json read; then cached by mtime), and the folder's group curves."""
    out: dict[str, object] = {}
    for name, params in ((folder, {"prefix": folder}), ("all", {"prefix": ""})):
        t0 = time.perf_counter()
        r = client.get("/api/sweep", params=params)
        first = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            client.get("/api/sweep", params=params)
            times.append(time.perf_counter() - t0)
        out[name] = {"runs": len(r.json()["runs"]), "first_ms": round(1e3 * first, 1),
                     "later": ms(times), "response_bytes": len(r.content)}  # fmt: skip
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        r = client.get("/api/sweep/curves", params={"prefix": folder, "column": "val_acc"})
        times.append(time.perf_counter() - t0)
    assert r.status_code == 200, r.text
    out[f"curves_{folder}"] = ms(times)
    return out


def predict_times(trained: Path, ids: dict[str, str], rounds: int) -> dict[str, object]:
    """``POST /api/predict`` round trips per checkpoint, for all three, and for a large file."""
    import httpx

    from digitlab.serve import serve_in_thread

    page_png = draw_digit(1, size=140, mode="L")  # what the draw page sends
    out: dict[str, object] = {}
    with serve_in_thread(trained) as url, httpx.Client(base_url=url, timeout=60) as client:
        cases = {name: ([rid], page_png) for name, rid in ids.items()}
        cases["all three"] = (list(ids.values()), page_png)
        cases["mlp, 280x280 RGB file"] = ([ids["mlp"]], draw_digit(1))
        for name, (chosen, png) in cases.items():
            params = {"ids": ",".join(chosen)}
            client.post("/api/predict", params=params, content=png)  # load the checkpoints
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                r = client.post("/api/predict", params=params, content=png)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            out[name] = ms(times)
    return out


def main() -> None:
    import httpx
    from threadpoolctl import threadpool_limits

    from digitlab.kernels import cpu_model
    from digitlab.serve import serve_in_thread
    from digitlab.serve.runs import RunIndex

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--runs", type=int, default=2000, help="synthetic runs under the root")
    p.add_argument("--no-browser", action="store_true")
    args = p.parse_args()
    threadpool_limits(args.threads)
    results: dict[str, object] = {
        "machine": {
            "cpu": cpu_model(),
            "threads": args.threads,
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        many, n, key = Path(tmp) / "many", args.runs, f"runs_{args.runs}"
        write_synthetic_runs(many, n)
        t0 = time.perf_counter()
        RunIndex(many).scan()
        cold = time.perf_counter() - t0
        trained = Path(tmp) / "trained"
        ids = train_runs(trained)

        with serve_in_thread(many) as url:
            with httpx.Client(base_url=url, timeout=60) as client:
                times, server_ms = [], []
                for _ in range(20):
                    t0 = time.perf_counter()
                    r = client.get("/api/runs")
                    times.append(time.perf_counter() - t0)
                    server_ms.append(r.json()["scan_ms"])
                assert len(r.json()["runs"]) == n
                results[key] = {
                    "first_scan_ms": round(1e3 * cold, 1),
                    "http_round_trip": ms(times),
                    "server_scan_median_ms": round(statistics.median(server_ms), 2),
                    "response_bytes": len(r.content),
                    "sweep": sweep_api(client, "sweep-000"),
                }
            if not args.no_browser:
                results[key]["browser"] = browser_render(url, n, "sweep-000")  # type: ignore[index]

        results["predict"] = predict_times(trained, ids, args.rounds)
    text = json.dumps(results, indent=2)
    (HERE / "serve-results.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
