"""Notebook regression set-up: nbval on tests/notebooks/baselines/*.ipynb, then the numbers.

``make test`` and ``tests/cpu_matrix.py`` pass ``--nbval --nbval-current-env``. nbval executes each
baseline once and compares the text of its outputs with the floating-point numbers masked
(``sanitize.cfg``, made cwd-independent here). Each baseline's injected ``output_dir`` points
into ``build/nbval/figures/<stem>``; the result tables the notebook writes there are compared
with ``references/<stem>/`` at a tolerance by test_references.py, which therefore runs after the
notebooks (ordered here) and only for notebooks executed in this session (stale tables from an
earlier run are cleared before a notebook's first cell). Every notebook cell and reference test
is marked ``slow`` and ``notebooks`` (``make test-fast`` / ``-m "not notebooks"`` skip them).

The kernels log their training requests (``ZSADLAB_TRAININGS_LOG``, as ``make notebooks`` does) into a
file of this session, so test_plan.py can compare ``zsadlab course plan`` with what the series really
requested, reusing this execution instead of running the series again.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from result_tables import baseline_output_dir

from zsadlab.run_notebooks import CACHE_ENV, NOTEBOOK_ENV, TRAININGS_LOG_ENV, clear_results

HERE = Path(__file__).resolve().parent
SANITIZE = HERE / "sanitize.cfg"
REFERENCE_TESTS = ("test_references.py", "test_plan.py")  # run after every notebook

_executed: set[str] = set()  # stems of the baselines nbval started in this session
_trainings: dict[str, Path] = {}  # "log": the training requests of this session's kernels


def _is_notebook_cell(item) -> bool:
    return str(item.fspath).endswith(".ipynb")


def _is_reference_test(item) -> bool:
    return Path(str(item.fspath)).name in REFERENCE_TESTS


def pytest_configure(config):
    # The baselines run against an empty run cache (as `make baselines` wrote them), never the user's
    # runs/cache: the notebook kernels nbval starts inherit ZSADLAB_CACHE from this process.
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="zsadlab-nbval-cache-")
    _trainings["log"] = Path(tempfile.mkdtemp(prefix="zsadlab-nbval-trainings-")) / "trainings.json"
    option = config.option
    if getattr(option, "nbval_sanitize_with", "missing") is None:
        option.nbval_sanitize_with = str(SANITIZE)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_notebook_cell(item) or _is_reference_test(item):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.notebooks)
    items.sort(key=_is_reference_test)  # stable: the numbers are checked after every notebook ran


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """Before a baseline's first cell: clear its old result tables; while nbval starts its kernel (in
    this setup), let the kernel inherit this session's trainings log and the notebook's name."""
    stem = Path(str(item.fspath)).stem
    first = _is_notebook_cell(item) and stem not in _executed
    saved = {name: os.environ.get(name) for name in (TRAININGS_LOG_ENV, NOTEBOOK_ENV)}
    if first:
        clear_results(baseline_output_dir(stem))
        _executed.add(stem)
        os.environ[TRAININGS_LOG_ENV], os.environ[NOTEBOOK_ENV] = str(_trainings["log"]), stem
    try:
        yield
    finally:
        if first:  # this process's own trainings (other tests) never log into it
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


@pytest.fixture(scope="session")
def executed_notebooks() -> set[str]:
    """Stems of the baselines nbval executed in this session."""
    return _executed


@pytest.fixture(scope="session")
def logged_trainings() -> list[dict]:
    """The training requests (``{"notebook", "key", "action"}``) of this session's notebook kernels."""
    import json

    log = _trainings.get("log")
    return json.loads(log.read_text(encoding="utf-8")) if log and log.is_file() else []

