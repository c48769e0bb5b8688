"""Notebook 09 in a real browser: JupyterLab on 127.0.0.1, headless Chromium runs every cell, moves
the playground's widgets and sees a new image anomaly score (issue #13, item 7).

Also: the rendered course site (``make site``) opens and shows its pages, when it has been built.
"""
from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
PLAYGROUND = REPO / "notebooks" / "09_playground.ipynb"
SCREENSHOTS = REPO / "build" / "browser"
SITE = REPO / "build" / "site" / "_build" / "html"
# Smoke profile: the test is about the widget wiring, not the model, and must finish on a CPU.
PARAMETERS = {"profile": "smoke", "device": "cpu"}
WIDGET_SCORE = re.compile(r"image anomaly score: (-?\d+\.\d+)")   # printed by the widget callback
STATIC_SCORE = re.compile(r"\w+: image anomaly score -?\d+\.\d+")  # printed by the non-interactive cell
RUN_TIMEOUT_MS = int(os.environ.get("ZSADLAB_BROWSER_TIMEOUT_S", "600")) * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll ``url`` until JupyterLab answers (or fail with the end of its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-2000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer {url} within {timeout:.0f} s", pytrace=False)


@pytest.fixture
def lab(tmp_path: Path):
    """JupyterLab on a random free port of 127.0.0.1 with a token, serving a temporary folder that
    holds notebook 09 with the smoke parameters injected (papermill's parameter cell); yields its URL."""
    root, state = tmp_path / "root", tmp_path / "jupyter"
    root.mkdir()
    nb = parameterize_notebook(load_notebook_node(str(PLAYGROUND)),
                               {**PARAMETERS, "output_dir": str(tmp_path / "figures")})
    nbformat.write(nb, root / PLAYGROUND.name)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(state / "runtime"), "JUPYTER_CONFIG_DIR": str(state / "config"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={state / 'settings'}", f"--LabApp.workspaces_dir={state / 'workspaces'}",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:  # containers often run as root; JupyterLab refuses that without the flag
        command.append("--allow-root")
    log_path = tmp_path / "jupyterlab.log"
    log = log_path.open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/status?token={token}", server, log_path)
        yield f"http://127.0.0.1:{port}/lab/tree/{PLAYGROUND.name}?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def widget_score(page) -> str:
    """The text of the playground's Output widget (empty until a control changes)."""
    return page.locator(".widget-output").first.inner_text()


def choose(page, description: str, index: int) -> None:
    """Select option ``index`` of the ipywidgets Dropdown labelled ``description``."""
    page.locator(".widget-dropdown", has=page.locator("label", has_text=description)).locator("select") \
        .select_option(index=index)


def accept_kernel_dialog(page, wait_ms: int = 15_000) -> None:
    """Accept JupyterLab's "Select Kernel" dialog (the preselected ipykernel) when it comes up."""
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    try:
        accept.wait_for(timeout=wait_ms)
    except Exception:  # playwright's TimeoutError: no dialog, the kernel started by itself
        return
    accept.click()


def test_playground_widgets_change_the_shown_score(lab, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(RUN_TIMEOUT_MS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        first, second = play(page, lab)
    finally:  # the last state, also when a step timed out
        page.screenshot(path=str(SCREENSHOTS / "09_playground.png"), full_page=False)
        page.close()
    assert WIDGET_SCORE.search(first) and WIDGET_SCORE.search(second)
    assert WIDGET_SCORE.search(first).group(0) != WIDGET_SCORE.search(second).group(0)


def play(page, url: str) -> tuple[str, str]:
    """Open the notebook, run all cells, move two controls; returns the widget's text after each move."""
    page.goto(url)
    page.locator(".jp-NotebookPanel .jp-Notebook").wait_for()
    accept_kernel_dialog(page)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.get_by_text(STATIC_SCORE).first.wait_for()  # the last non-interactive cell has run
    assert page.locator(".widget-dropdown select").count() >= 3

    choose(page, "DPAM", 1)  # V-V -> Q-Q: the callback draws the map and prints the score
    page.wait_for_function("re => new RegExp(re).test(document.querySelector('.widget-output').innerText)",
                           arg=WIDGET_SCORE.pattern)
    first = widget_score(page)
    choose(page, "method", 2)  # another method on the same image: another score
    page.wait_for_function("old => { const t = document.querySelector('.widget-output').innerText;"
                           " return t !== old && /image anomaly score: -?\\d+\\.\\d+/.test(t); }", arg=first)
    page.locator(".widget-output").first.scroll_into_view_if_needed()  # for the screenshot
    return first, widget_score(page)


@pytest.mark.skipif(not (SITE / "index.html").is_file(), reason="site not built (make site)")
def test_built_site_shows_the_intro_and_a_notebook_page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto((SITE / "intro.html").as_uri())
    assert "zsadlab" in page.title()
    page.locator("nav a", has_text="DPAM").first.click()
    page.locator("article h1").first.wait_for()
    assert "DPAM" in page.locator("article h1").first.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "site_02_dpam.png"), full_page=False)
    page.close()
