"""How far the notebooks' result tables move across CPU kernels and thread counts.

    python tests/notebooks/measure_spread.py build/cpu-matrix/*/

Each argument is a folder of ``<stem>/<table>`` files written under one combination (``make
test-cpus`` keeps them in ``build/cpu-matrix/<kernel>-omp<threads>/``). For every reference table
in ``references/`` it prints the largest ``|value - reference|`` over all combinations (where, and
under which combination) and whether its tolerance (result_tables.table_atol) covers it. Choose it at least ten
times the largest spread, and well below the change a real behaviour change makes (for example
DPAM mode vv -> qq in a notebook's parameters). After ``make baselines``, run ``make test-cpus``
and check this report before committing new references.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from result_tables import REFERENCES, RTOL, deviation, numeric_pairs, table_atol  # noqa: E402


def spread(folders: list[Path], stem: str, name: str) -> tuple[float, str, list[str]]:
    """(largest |value - reference|, where and under which folder, structural differences)."""
    worst, where, problems = 0.0, "-", []
    for folder in folders:
        actual = Path(folder) / stem / name
        if not actual.is_file():
            problems.append(f"{Path(folder).name}: not written")
            continue
        structure, pairs = numeric_pairs(actual, REFERENCES / stem / name)
        problems += [f"{Path(folder).name}: {p}" for p in structure]
        for location, a, b in pairs:
            d = deviation(a, b)
            if d > worst:
                worst, where = d, f"{location} ({Path(folder).name}: {a!r} vs {b!r})"
    return worst, where, problems


def report(folders: list[Path]) -> bool:
    """Print the spread of every reference table over ``folders``; True when the tolerance covers it."""
    folders = [Path(f) for f in folders]
    print(f"spread of the notebook result tables over {len(folders)} combinations (rtol {RTOL:g}):")
    covered = True
    for table in sorted(REFERENCES.glob("*/*")):
        worst, where, problems = spread(folders, table.parent.name, table.name)
        atol = table_atol(table.parent.name, table.name)
        ok = not problems and worst <= atol and not math.isinf(worst)
        covered &= ok
        print(f"  {table.parent.name}/{table.name}: max |diff| {worst:.3g} (atol {atol:g}) "
              f"{'ok' if ok else 'NOT COVERED'}" + (f"  at {where}" if worst else ""))
        for problem in problems:
            print(f"      {problem}")
    return covered


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(0 if report([Path(a) for a in sys.argv[1:]]) else 1)
