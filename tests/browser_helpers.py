"""Debian's headless Chromium for the browser tests of ``digitlab serve``: the skip when it is
missing, and a driver with the same window and flags in every test file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def require_browser() -> Any:
    """Skip the calling test module unless Chromium, chromedriver, Selenium and uvicorn are
    there; return ``selenium.webdriver``."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        need = f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})"
        pytest.skip(need, allow_module_level=True)
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
    pytest.importorskip("uvicorn")
    return webdriver


def chromium_driver() -> Iterator[Any]:
    """A headless Chromium session (1400 x 1000 window), quit when the generator closes."""
    webdriver = require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    drv = webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)
    yield drv
    drv.quit()


def artifacts_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$DIGITLAB_TEST_ARTIFACTS``, else pytest's temporary folder."""
    env = os.environ.get("DIGITLAB_TEST_ARTIFACTS")
    folder = Path(env) if env else tmp_path_factory.getbasetemp() / "serve-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
