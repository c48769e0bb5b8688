"""The nbval baselines must be current: same code as notebooks/*.ipynb (apart from papermill's
injected-parameters cell), and the source notebooks are committed without outputs."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
BASELINES = Path(__file__).resolve().parent / "baselines"
STALE = "baseline {name} is stale: run `make baselines` (then review and commit tests/notebooks/baselines/)"


def code_cells(path: Path) -> list[str]:
    nb = nbformat.read(str(path), as_version=4)
    return [c.source for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def test_there_are_notebooks():
    assert SOURCES, f"no notebooks in {ROOT / 'notebooks'}"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_baseline_matches_source(source: Path):
    baseline = BASELINES / source.name
    assert baseline.is_file(), f"no baseline for {source.name}: run `make baselines`"
    assert code_cells(baseline) == code_cells(source), STALE.format(name=source.name)


def test_no_orphan_baselines():
    orphans = sorted(p.name for p in BASELINES.glob("*.ipynb") if not (ROOT / "notebooks" / p.name).exists())
    assert not orphans, f"baselines without a notebook: {orphans}; run `make baselines` after deleting them"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_source_notebook_is_clean(source: Path):
    nb = nbformat.read(str(source), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), \
        f"{source.name}: the first code cell must be tagged `parameters`"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{source.name}: commit notebooks without outputs (code cells {dirty}); use nbstripout"


REQUIRED_PARAMETERS = ("profile", "dataset", "data_root", "device", "seed", "epochs", "image_size", "output_dir",
                       "show_solutions")


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_parameters_cell_offers_the_series_parameters(source: Path):
    cell = next(c for c in nbformat.read(str(source), as_version=4).cells if c.cell_type == "code")
    names = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
    missing = [p for p in REQUIRED_PARAMETERS if p not in names]
    assert not missing, f"{source.name}: the parameters cell lacks {missing}"
