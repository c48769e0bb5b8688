"""nbval set-up for the notebook regression (tests/notebooks/baselines/*.ipynb).

``pyproject.toml`` adds ``--nbval --nbval-current-env`` to every pytest run; this file makes
the sanitizer file independent of the working directory and marks every notebook cell as
``slow`` and ``notebooks`` (so ``make test-fast`` / ``-m "not notebooks"`` skip them).
"""
from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SANITIZE = HERE / "sanitize.cfg"


def pytest_configure(config):
    option = config.option
    if getattr(option, "nbval_sanitize_with", "missing") is None:
        option.nbval_sanitize_with = str(SANITIZE)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.notebooks)
