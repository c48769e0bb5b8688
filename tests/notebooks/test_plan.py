"""`zsadlab course plan` lists exactly the trainings the series requests: in the smoke profile, the
plan's keys are the distinct keys the notebooks trained or reused when nbval executed them in this
session (their kernels log every request, as `make notebooks` does into trainings.json)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from zsadlab.run_notebooks import CACHE_ENV
from zsadlab.series import plan

REPO = Path(__file__).resolve().parents[2]
SERIES = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_smoke_plan_has_exactly_the_keys_the_executed_series_trained_or_reused(executed_notebooks,
                                                                                logged_trainings):
    missing = sorted({p.stem for p in SERIES} - executed_notebooks)
    if missing:
        pytest.skip(f"the whole series must run in this session for this comparison (missing: {missing[:3]})")
    logged = {e["key"] for e in logged_trainings if e["action"] in ("trained", "reused")}
    planned = {run.key for run in plan(SERIES, {"profile": "smoke"}, cache=os.environ[CACHE_ENV])}
    assert planned == logged, (f"planned but not requested: {sorted(planned - logged)}; requested but not "
                               f"planned: {sorted(logged - planned)} (declare it in zsadlab/series.py)")
