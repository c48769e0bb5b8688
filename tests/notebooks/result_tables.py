"""The notebook regression's result tables: where the baselines write them and how they compare.

Each baseline (``baselines/<stem>.ipynb``) writes its result tables (CSV/JSON) into the
``output_dir`` papermill injected; ``make baselines`` copies them to ``references/<stem>/``.
Structure is compared exactly (file names, header, row labels, keys, lengths, every text cell);
numbers with ``|actual - reference| <= ATOL + RTOL * |reference|`` (NaN matches NaN). Used by
test_references.py and by measure_spread.py, which measures the spread these tolerances must cover.
"""
from __future__ import annotations

import ast
import csv
import json
import math
from pathlib import Path
from typing import Iterator

import nbformat

from zsadlab.viz import resolve_path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASELINES = HERE / "baselines"
REFERENCES = HERE / "references"

# Chosen from the spread measured across ATEN_CPU_CAPABILITY=default/avx2/avx512 x OMP_NUM_THREADS=1/2
# (`make test-cpus` prints it, tests/notebooks/measure_spread.py): at least ten times the largest spread,
# well below what a real change moves (the DPAM default vv -> qq moves the smoke metrics by 1.2e-3 to 7e-3).
# Measured (2026-11-30, Xeon with AVX-512, 6 combinations): AnomalyCLIP/CLIP metrics <= 4.0e-6, InCTRL
# k-shot AUROC 0, InCTRL score parts <= 2.7e-4 (eval BatchNorm with a small running variance amplifies
# kernel noise, FIXTURES inctrl §6). Rerun after `make baselines`.
RTOL = 0.0
ATOL = 1e-4
# Measured across default/avx2/avx512 x OMP 1/2 (make test-cpus): the tiny InCTRL's training amplifies kernel
# rounding (Adam on rounding-level gradients), so its scores move by up to 1.8e-2 (2026-12-04) and an AUROC over a few smoke queries
# by one rank swap (0.0625); 01's baseline_metrics is in percent (1.6e-4). 11's comparison holds the same tiny
# InCTRL's image AUROC / AP over a few queries (moved by 0.021 / 0.011 under ATEN_CPU_CAPABILITY=default OMP 1).
ATOL_PER_TABLE = {"08_inctrl_few_shot/score_parts.json": 0.1, "08_inctrl_few_shot/k_shot.json": 0.15,
                  "01_clip_baseline_failure/baseline_metrics.json": 2e-3,
                  "11_zero_shot_without_training/comparison.json": 0.15,
                  "11_zero_shot_without_training/11_results.json": 0.15}

# Tables whose metrics are in percent (0-100): ATOL is sized for fractions (0-1), so theirs is 100 x ATOL
# (02's dpam_ablation moved by 1.1e-4 under ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1, i.e. 1.1e-6 as a fraction).
PERCENT_TABLES = {"02_dpam/dpam_ablation.json", "03_object_agnostic_prompts/agnostic_vs_aware.json",
                  "03_object_agnostic_prompts/prompt_ablation.json", "06_zero_shot_evaluation/paper_reference.json",
                  "07_tn3k_zero_shot_vs_finetuning/cross_domain.json"}  # 07's moved by 9.6e-5 in % (2026-12-04)
PERCENT = 100.0

Number = float


def table_atol(stem: str, name: str) -> float:
    """The absolute tolerance for ``references/<stem>/<name>``: its own, else ATOL (x 100 for a table in percent)."""
    table = f"{stem}/{name}"
    return ATOL_PER_TABLE.get(table, ATOL * (PERCENT if table in PERCENT_TABLES else 1.0))


def baseline_output_dir(stem: str) -> Path:
    """The ``output_dir`` papermill injected into ``baselines/<stem>.ipynb`` (resolved as the notebook does)."""
    nb = nbformat.read(str(BASELINES / f"{stem}.ipynb"), as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    for node in ast.parse(injected.source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "output_dir" for t in node.targets):
            return resolve_path(ast.literal_eval(node.value), ROOT)
    raise LookupError(f"{stem}.ipynb: no output_dir in the injected parameters; run `make baselines`")


def _number(text: str) -> Number | str:
    """A CSV cell as a float when it is one, else the text itself."""
    try:
        return float(text)
    except ValueError:
        return text


def _csv_leaves(path: Path) -> Iterator[tuple[str, object]]:
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    header = rows[0] if rows else []
    yield "header", tuple(header)
    for i, row in enumerate(rows[1:], start=1):
        yield f"row {i} length", len(row)
        for name, cell in zip(header, row):
            yield f"row {i} ({row[0]}) / {name}", _number(cell)


def _json_leaves(value, where: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(value, dict):
        yield f"{where} keys", tuple(sorted(value))
        for key in value:
            yield from _json_leaves(value[key], f"{where}/{key}")
    elif isinstance(value, list):
        yield f"{where} length", len(value)
        for i, item in enumerate(value):
            yield from _json_leaves(item, f"{where}[{i}]")
    else:
        yield where or "/", value


def leaves(path: str | Path) -> dict[str, object]:
    """Every entry of a result table keyed by where it is (``row 2 (bottle) / image_auroc``, ``/a/b[0]``)."""
    path = Path(path)
    if path.suffix == ".csv":
        return dict(_csv_leaves(path))
    return dict(_json_leaves(json.loads(path.read_text(encoding="utf-8"))))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_pairs(actual: str | Path, reference: str | Path) -> tuple[list[str], list[tuple[str, float, float]]]:
    """``(structural differences, [(where, actual, reference) for every pair of numbers])``."""
    got, want = leaves(actual), leaves(reference)
    problems = [f"{where}: missing" for where in want if where not in got]
    problems += [f"{where}: not in the reference" for where in got if where not in want]
    pairs = []
    for where in want.keys() & got.keys():
        a, b = got[where], want[where]
        if _is_number(a) and _is_number(b) and not (where.endswith(" length")):
            pairs.append((where, float(a), float(b)))
        elif a != b:
            problems.append(f"{where}: {a!r} (reference {b!r})")
    return sorted(problems), sorted(pairs)


def deviation(a: float, b: float) -> float:
    """``|a - b|``; 0 when both are NaN, infinite when only one is."""
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    return 0.0 if a == b else abs(a - b)


def mismatches(actual: str | Path, reference: str | Path, rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    """Human-readable differences beyond the tolerance (empty: the tables match)."""
    problems, pairs = numeric_pairs(actual, reference)
    for where, a, b in pairs:
        if deviation(a, b) > atol + (rtol * abs(b) if math.isfinite(b) else 0.0):
            problems.append(f"{where}: {a!r} (reference {b!r}, |diff| {deviation(a, b):.3g} > atol {atol:g} + "
                            f"rtol {rtol:g} x |reference|)")
    return problems
