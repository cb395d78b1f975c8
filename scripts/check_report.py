#!/usr/bin/env python3
"""Check that a digitlab report renders in headless Chromium: every figure loaded, page not blank.

Usage: ``python scripts/check_report.py runs/report.html [--screenshot out.png]``

1. ``chromium --dump-dom`` loads the page; the report's inline script marks each ``<img>`` with
   ``data-ok="1"`` (decoded, ``naturalWidth > 0``, laid out with a non-zero size) or ``"0"``
   and appends ``<div id="render-check" data-images data-loaded data-height>``.
2. The dumped DOM is parsed: every image must be ok, their number must equal the
   ``data-figures`` count the report declares, and no figure may be marked missing.
3. ``chromium --screenshot`` at 1400 x page height (capped) must not be blank (pixel spread).

Exit status 0 when everything rendered, 1 otherwise (one line per failure), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=15000",
]
WIDTH = 1400
MAX_HEIGHT = 16000  # Chromium's screenshots of taller windows are unreliable


class DomScan(HTMLParser):
    """Collect the images, the render-check element and missing-figure notes of a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.check: dict[str, str | None] | None = None
        self.declared: int | None = None
        self.missing: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "body" and a.get("data-figures") is not None:
            self.declared = int(a["data-figures"] or 0)
        elif a.get("id") == "render-check":
            self.check = a
        if a.get("data-missing-figure"):
            self.missing.append(a["data-missing-figure"] or "")


def chromium(binary: str, profile: str, *args: str, timeout: float = 120) -> str:
    """Run Chromium headless on a fresh profile; return stdout (raise on failure)."""
    cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"chromium exited with {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def image_spread(png: Path) -> float:
    """Standard deviation of the grey levels of a PNG (0 for a blank image)."""
    from PIL import Image

    with Image.open(png) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float64)
    return float(grey.std())


def check(report: Path, binary: str, screenshot: Path | None) -> list[str]:
    """Failures found while rendering ``report`` (empty when all is well)."""
    failures: list[str] = []
    url = report.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="check-report-") as tmp:
        dom = chromium(binary, str(Path(tmp) / "profile-dom"), "--dump-dom", url)
        scan = DomScan()
        scan.feed(dom)
        if scan.check is None:
            return ["the report's render check did not run (no #render-check in the DOM)"]
        for i, img in enumerate(scan.images):
            name = img.get("data-figure") or img.get("alt") or f"image {i + 1}"
            if img.get("data-ok") != "1":
                failures.append(f"{name}: image did not render")
        if scan.declared is not None and scan.declared != len(scan.images):
            failures.append(
                f"the report declares {scan.declared} figures, the page has "
                f"{len(scan.images)} images"
            )
        failures += [f"{name}: figure missing from the report" for name in scan.missing]
        height = int(scan.check.get("data-height") or 1000)
        shot = screenshot or Path(tmp) / "screenshot.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        chromium(
            binary,
            str(Path(tmp) / "profile-shot"),
            f"--screenshot={shot.resolve()}",
            f"--window-size={WIDTH},{min(max(height, 600), MAX_HEIGHT)}",
            url,
        )
        if not shot.is_file():
            failures.append("no screenshot was written")
        elif image_spread(shot) < 2.0:
            failures.append(f"{shot}: screenshot is blank")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report.html")
    parser.add_argument("--screenshot", type=Path, help="keep the screenshot here (PNG)")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        help="browser binary (default: $CHROMIUM or /usr/bin/chromium)",
    )
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"{args.report}: no such file")
        return 2
    binary = shutil.which(args.chromium) or args.chromium
    if not Path(binary).is_file():
        print(f"{args.chromium}: no such browser (apt-get install -y chromium)")
        return 2
    try:
        failures = check(args.report, binary, args.screenshot)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        failures = [f"chromium failed: {exc}"]
    for line in failures:
        print(line)
    if not failures:
        print(f"{args.report}: every figure rendered")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
