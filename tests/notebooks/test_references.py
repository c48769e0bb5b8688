"""The numbers of the notebook regression: each baseline executed by nbval in this session writes
its result tables into its output_dir; they must match references/<stem>/ (written by
`make baselines`) in structure exactly and in value within result_tables.RTOL/ATOL, the spread
measured across CPU kernels and thread counts (measure_spread.py). nbval checks the text with
the numbers masked; a change of behaviour moves these numbers well beyond that spread."""
from __future__ import annotations

import pytest
from result_tables import BASELINES, REFERENCES, baseline_output_dir, mismatches, table_atol

from zsadlab.run_notebooks import result_files

STEMS = sorted(p.stem for p in BASELINES.glob("*.ipynb"))
CASES = [(stem, path.name) for stem in STEMS for path in result_files(REFERENCES / stem)]
REGENERATE = "if the change is intended, run `make baselines` and review the diff of tests/notebooks/references/"


def require_executed(stem: str, executed: set[str]) -> None:
    if stem not in executed:
        pytest.skip(f"baselines/{stem}.ipynb did not run in this session (run it too: `pytest tests/notebooks`)")


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_writes_the_result_tables_of_its_reference(stem, executed_notebooks):
    require_executed(stem, executed_notebooks)
    written = [p.name for p in result_files(baseline_output_dir(stem))]
    expected = [p.name for p in result_files(REFERENCES / stem)]
    assert written == expected, f"{stem} wrote {written}, the reference has {expected}; {REGENERATE}"


@pytest.mark.parametrize("stem,name", CASES, ids=[f"{s}/{n}" for s, n in CASES])
def test_result_table_matches_its_smoke_reference_within_the_measured_spread(stem, name, executed_notebooks):
    require_executed(stem, executed_notebooks)
    actual = baseline_output_dir(stem) / name
    assert actual.is_file(), f"{stem} did not write {name} (see its failing cell above)"
    problems = mismatches(actual, REFERENCES / stem / name, atol=table_atol(stem, name))
    assert not problems, f"{stem}/{name} differs from its reference ({REGENERATE}):\n  " + "\n  ".join(problems)


def test_every_reference_folder_belongs_to_a_baseline():
    orphans = sorted(p.name for p in REFERENCES.iterdir() if p.is_dir() and p.name not in STEMS)
    assert not orphans, f"references without a baseline notebook: {orphans}; delete them"
