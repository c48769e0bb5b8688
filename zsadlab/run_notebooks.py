"""Execute the notebook series with papermill (``make notebooks``) or write nbval baselines (``make baselines``).

    python -m zsadlab.run_notebooks --profile auto --out build/notebooks --figures figures notebooks/*.ipynb
    python -m zsadlab.run_notebooks --profile smoke --baselines tests/notebooks/baselines \
        --references tests/notebooks/references notebooks/*.ipynb

Each notebook runs in its own folder (papermill ``cwd``) with these parameters injected:
``profile`` and ``output_dir`` (``<figures>/<stem>``, kept *relative* when given relative: the
notebooks resolve it against the repository root with :func:`zsadlab.viz.resolve_path`, so
the same injected cell works under papermill (cwd ``notebooks/``) and nbval (cwd
``tests/notebooks/baselines/``)). Seconds per notebook go to ``timings.json``, every training request
(trained, reused from the run cache, or pulled) to ``trainings.json``.

Baseline mode executes in the smoke profile and writes *sanitised* notebooks for nbval:
image payloads removed (their ``text/plain`` stand-in kept, so output counts still match),
papermill's timing metadata and widget state dropped, all text kept. With ``--references`` the
result tables each notebook writes to its ``output_dir`` (``*.csv``, ``*.json``) are copied to
``<references>/<stem>/``: the numbers the notebook regression compares with a tolerance
(tests/notebooks/test_references.py), while nbval compares the text with the numbers masked.

Kernels are started with CurveZMQ keys from the kernel manager when the kernelspec supports
them, so ipykernel does not warn about unencrypted TCP once per notebook.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .engine.cache import CACHE_ENV, NOTEBOOK_ENV, TRAININGS_LOG_ENV
from .utils import atomic_path, write_json_atomic

IMAGE_MIME_PREFIXES = ("image/",)
BASELINE_FIGURES = "build/nbval/figures"
RESULT_SUFFIXES = (".csv", ".json")
KERNEL = "python3"
TRAININGS = "trainings.json"  # every training request of the series: {"notebook", "key", "action"}


def encrypted_kernel_manager():
    """A jupyter KernelManager class that provisions CurveZMQ keys when the kernelspec supports them
    (no "Kernel is running over TCP without encryption" warning); plain TCP otherwise."""
    import zmq
    from jupyter_client.manager import KernelManager
    from traitlets import default

    class EncryptedKernelManager(KernelManager):
        @default("transport_encryption")
        def _transport_encryption_default(self):
            return "auto" if zmq.has("curve") else "disabled"

    return EncryptedKernelManager


def notebook_parameters(stem: str, profile: str, figures: str, extra: dict | None = None) -> dict:
    """The parameters papermill injects into notebook ``stem``."""
    params = {"profile": profile, "output_dir": str(Path(figures) / stem)}
    params.update(extra or {})
    return params


def execute(source: Path, target: Path, parameters: dict, kernel_name: str = KERNEL,
            timeout: int | None = 1800) -> float:
    """Run ``source`` with papermill into ``target`` (cwd = the source's folder); returns seconds."""
    import papermill as pm

    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pm.execute_notebook(
        str(source), str(target), parameters=parameters, cwd=str(source.resolve().parent),
        kernel_name=kernel_name, progress_bar=False, log_output=False, execution_timeout=timeout,
        kernel_manager_class=encrypted_kernel_manager(),
    )
    return time.perf_counter() - start


def sanitise_baseline(nb):
    """A copy of the executed notebook ``nb`` fit to commit as an nbval baseline."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data:
                for mime in [m for m in data if m.startswith(IMAGE_MIME_PREFIXES)]:
                    del data[mime]
            if "metadata" in output:
                output["metadata"] = {}
    return nb


def result_files(folder: Path) -> list[Path]:
    """The result tables (``*.csv``, ``*.json``) a notebook wrote into its output folder, sorted."""
    return sorted(p for p in Path(folder).glob("*") if p.is_file() and p.suffix in RESULT_SUFFIXES)


def clear_results(folder: Path) -> None:
    """Remove earlier result tables from ``folder`` (figures and anything else stay)."""
    for path in result_files(folder):
        path.unlink()


def copy_results(folder: Path, target: Path) -> list[Path]:
    """Replace the result tables in ``target`` by those in ``folder``; returns the copies."""
    clear_results(target)
    copies = []
    for path in result_files(folder):
        with atomic_path(target / path.name) as tmp:
            shutil.copyfile(path, tmp)
        copies.append(target / path.name)
    return copies


def _write_sanitised(executed: Path, target: Path) -> None:
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        nbformat.write(sanitise_baseline(nb), str(tmp))


def run(notebooks: Sequence[Path], profile: str, out: Path, figures: str, baselines: Path | None = None,
        timings_path: Path | None = None, extra: dict | None = None, kernel_name: str = KERNEL,
        references: Path | None = None) -> dict:
    """Execute ``notebooks`` in order; returns ``{"seconds": {stem: s}, "failed": [stems]}``.

    With ``references`` each notebook's result tables are copied to ``references/<stem>/`` (earlier
    result tables in its output folder are cleared first, so only this run's tables are copied)."""
    from tqdm.auto import tqdm

    from .viz import repo_root, resolve_path

    seconds: dict[str, float] = {}
    failed: list[str] = []
    trainings = out / TRAININGS
    trainings.unlink(missing_ok=True)  # this run's requests only (a file this runner wrote)
    os.environ[TRAININGS_LOG_ENV] = str(trainings.resolve())
    if baselines is not None:  # baselines start from an empty run cache, so they never depend on earlier runs
        os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="zsadlab-cache-")
    bar = tqdm(notebooks, desc="notebooks", unit="nb", file=sys.stdout)
    for index, source in enumerate(bar, start=1):
        stem = source.stem
        os.environ[NOTEBOOK_ENV] = stem
        bar.set_postfix_str(stem)
        executed = out / source.name
        params = notebook_parameters(stem, profile, figures, extra)
        results = resolve_path(params["output_dir"], repo_root(source.resolve().parent))  # as the notebook does
        if references is not None:
            clear_results(results)
        try:
            seconds[stem] = round(execute(source, executed, params, kernel_name), 2)
            status = "ok"
            if baselines is not None:
                _write_sanitised(executed, baselines / source.name)
            if references is not None:
                copy_results(results, references / stem)
        except Exception as err:  # keep going: report every broken notebook at once
            seconds[stem] = float("nan")
            failed.append(stem)
            status = f"FAILED ({type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''})"
        bar.write(f"[{index}/{len(notebooks)}] {stem}: {seconds[stem]:.1f} s {status} -> {executed}")
    report = {"profile": profile, "seconds": seconds, "total_seconds": round(sum(v for v in seconds.values() if v == v), 2),
              "failed": failed}
    if trainings.is_file():
        print(trainings_summary(json.loads(trainings.read_text(encoding="utf-8"))))
    if timings_path is not None:
        write_json_atomic(_merged(report, timings_path), timings_path)
    return report


def trainings_summary(entries: list[dict]) -> str:
    """One line on the series' training requests: how many were trained, reused or pulled, and
    which keys (if any) were trained more than once - the run cache should make that impossible."""
    counts = {action: sum(e["action"] == action for e in entries) for action in ("trained", "reused", "pulled")}
    trained = [e["key"] for e in entries if e["action"] == "trained"]
    twice = sorted({key for key in trained if trained.count(key) > 1})
    line = "trainings: " + ", ".join(f"{n} {action}" for action, n in counts.items())
    return line + (f"; TRAINED MORE THAN ONCE: {', '.join(twice)}" if twice else "; no training ran twice")


def _merged(report: dict, path: Path) -> dict:
    """``report`` merged into the timings already at ``path`` (same profile): re-running a few
    notebooks updates their entries and keeps the others."""
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return report
    if old.get("profile") != report["profile"] or not isinstance(old.get("seconds"), dict):
        return report
    seconds = {**old["seconds"], **report["seconds"]}
    failed = sorted((set(old.get("failed", [])) - set(report["seconds"])) | set(report["failed"]))
    return {"profile": report["profile"], "seconds": seconds,
            "total_seconds": round(sum(v for v in seconds.values() if v == v), 2), "failed": failed}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zsadlab.run_notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks to execute, in order")
    parser.add_argument("--profile", default="auto", choices=["auto", "full", "smoke"])
    parser.add_argument("--out", type=Path, default=Path("build/notebooks"), help="executed notebooks go here")
    parser.add_argument("--figures", default="figures", help="figures go to <figures>/<notebook stem>/")
    parser.add_argument("--baselines", type=Path, default=None,
                        help="write sanitised smoke-profile baselines for nbval into this folder (forces --profile smoke)")
    parser.add_argument("--references", type=Path, default=None,
                        help="copy each notebook's result tables (csv/json in its output_dir) to <references>/<stem>/")
    parser.add_argument("--timings", type=Path, default=None, help="default: <out>/timings.json")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="extra parameter for every notebook (value parsed as JSON when possible)")
    parser.add_argument("--kernel", default=KERNEL)
    args = parser.parse_args(argv)

    extra = {}
    for name, value in args.parameter:
        try:
            extra[name] = json.loads(value)
        except json.JSONDecodeError:
            extra[name] = value
    profile, figures, out = args.profile, args.figures, args.out
    timings = args.timings
    if args.baselines is not None:
        profile, figures = "smoke", BASELINE_FIGURES
        out = args.out if args.out != Path("build/notebooks") else Path("build/nbval/executed")
        timings = timings or Path("build/notebooks/timings_smoke.json")
    missing = [str(nb) for nb in args.notebooks if not nb.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    report = run(args.notebooks, profile, out, figures, args.baselines, timings or out / "timings.json",
                 extra, args.kernel, args.references)
    print(f"{len(args.notebooks) - len(report['failed'])}/{len(args.notebooks)} notebooks ran in "
          f"{report['total_seconds']:.1f} s (profile {profile}); timings in {timings or out / 'timings.json'}")
    if report["failed"]:
        print("failed: " + ", ".join(report["failed"]) + f" (see the executed copies in {out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
