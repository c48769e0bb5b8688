"""Run tests/parity and tests/notebooks under every CPU kernel this machine supports (``make test-cpus``).

    python tests/cpu_matrix.py [--out build/cpu-matrix] [--threads 1 2] [extra pytest arguments]

Combinations: ``ATEN_CPU_CAPABILITY`` = default, avx2, avx512 (those torch finds on this CPU) x
``OMP_NUM_THREADS`` = 1, 2. One line per combination (passed/failed, test counts, seconds); the
pytest log and the result tables the notebooks wrote go to ``<out>/<combination>/``, and the
spread of those tables is printed at the end (tests/notebooks/measure_spread.py). Exit status 1
when any combination failed.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "notebooks"))
sys.path.insert(0, str(ROOT))

from measure_spread import report  # noqa: E402
from result_tables import BASELINES, baseline_output_dir  # noqa: E402

from zsadlab.run_notebooks import copy_results  # noqa: E402

KERNELS = ("default", "avx2", "avx512")  # torch's ATEN_CPU_CAPABILITY values, weakest first
TARGETS = ("tests/parity", "tests/notebooks")
NBVAL = ("--nbval", "--nbval-current-env")  # the notebook regression (as `make test` runs it)


def supported_kernels() -> list[str]:
    """The ATEN_CPU_CAPABILITY values this CPU runs: up to the best one torch detects."""
    import torch

    best = torch.backends.cpu.get_cpu_capability().lower()  # "default", "avx2", "avx512", ...
    return list(KERNELS[: KERNELS.index(best) + 1]) if best in KERNELS else ["default"]


def summary(log: str) -> str:
    """pytest's final counts (``"312 passed, 4 skipped"``), or the last line of the log."""
    counts = re.findall(r"(\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed|deselected))", log.splitlines()[-1]
                        if log.strip() else "")
    return ", ".join(counts) or (log.strip().splitlines() or ["no output"])[-1]


def run_combination(kernel: str, threads: int, out: Path, pytest_args: list[str]) -> tuple[bool, str, float]:
    """pytest on TARGETS under one combination; returns (passed, counts, seconds)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kernel, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NBVAL, *TARGETS, *pytest_args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "pytest.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    for notebook in sorted(BASELINES.glob("*.ipynb")):
        copy_results(baseline_output_dir(notebook.stem), out / notebook.stem)
    return done.returncode == 0, summary(done.stdout), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "cpu-matrix")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args, pytest_args = parser.parse_known_args(argv)
    kernels = supported_kernels()
    print(f"CPU kernels here: {', '.join(kernels)}; OMP_NUM_THREADS: {', '.join(map(str, args.threads))}", flush=True)
    failed, folders = [], []
    for kernel in kernels:
        for threads in args.threads:
            name = f"{kernel}-omp{threads}"
            folders.append(args.out / name)
            ok, counts, seconds = run_combination(kernel, threads, folders[-1], pytest_args)
            print(f"ATEN_CPU_CAPABILITY={kernel:<7} OMP_NUM_THREADS={threads} -> {'passed' if ok else 'FAILED'} "
                  f"({counts}) {seconds:.0f} s", flush=True)
            if not ok:
                failed.append(f"{name} (log: {folders[-1] / 'pytest.log'})")
    print()
    report(folders)
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
