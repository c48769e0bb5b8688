"""Browser tests: opt-in only (``make test-browser``, ``ZSADLAB_BROWSER=1`` or ``--run-browser``).

They need Debian's Chromium (``apt-get install -y chromium chromium-driver``) and the ``playwright``
Python package, which drives that binary through ``executable_path``: ``playwright install`` (a
browser download) is never needed. Without the opt-in every test here is skipped, so ``make test``
and ``.ci/run`` never start a browser.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Chromium's flags for a sandbox-less, offline, headless container (no GPU, no background traffic).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_addoption(parser: pytest.Parser) -> None:
    # Only seen when tests/browser is on the command line (pytest reads sub-folder conftests late).
    parser.addoption("--run-browser", action="store_true", help="run the browser tests (tests/browser)")


def opted_in(config: pytest.Config) -> bool:
    return os.environ.get("ZSADLAB_BROWSER") == "1" or bool(config.getoption("--run-browser", default=False))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") and not opted_in(item.config):
        pytest.skip("browser test: opt in with `make test-browser` (or ZSADLAB_BROWSER=1)")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary: ``$ZSADLAB_CHROMIUM``, else Debian's ``chromium`` on PATH."""
    path = os.environ.get("ZSADLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(f"{path}: no Chromium; install Debian's with `apt-get install -y chromium chromium-driver` "
                    f"or set ZSADLAB_CHROMIUM", pytrace=False)
    return path


@pytest.fixture(scope="session")
def browser(chromium: str):
    """A headless Chromium driven by playwright (closed after the session)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `.venv/bin/pip install playwright` (no `playwright install` "
                    "needed: the tests use Debian's Chromium)", pytrace=False)
    with sync_playwright() as driver:
        instance = driver.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()
