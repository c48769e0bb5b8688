"""Train a course plan side by side: ``zsadlab course train [--plan FILE] [--workers N] [--executor ...]``.

Every run of the plan goes through the one trainer, exactly as the notebook that requests it:
:func:`train_planned` rebuilds the notebook's session from the plan and calls ``S.trained``
(load-or-train in the run cache), so a finished run is skipped, an interrupted one resumes after
its last completed epoch, and the notebooks afterwards report "reused". Runs are spread by
existing engines, never a scheduler of our own:

* ``local``: :class:`concurrent.futures.ProcessPoolExecutor` with one worker process per GPU
  (``CUDA_VISIBLE_DEVICES`` set per worker) or ``--workers N`` on the CPU;
* ``slurm``: a submitit job array (``--slurm-partition``, ``--gpus-per-run``, ``--time``); a run that asks
  for several GPUs is launched inside its job as ``torchrun --standalone`` DDP (``engine.train`` knows ranks);
* ``submitit-local`` / ``submitit-debug``: submitit's local and debug executors (the same path as
  ``slurm`` on one machine: how the tests check it).

Each run writes its output to ``<logs>/<method>-<key>.log``; a failing run is reported with that path
and the others go on; one progress line per finished run.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .engine.training import completed_epochs
from .errors import RunError, UserError
from .utils import write_json_atomic

EXECUTORS = ("local", "slurm", "submitit-local", "submitit-debug")
SUBMITIT_CLUSTERS = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}


def run_folder(run: dict, cache: str | Path | None = None) -> Path:
    """The run-cache folder of planned ``run`` (in ``cache``, default the plan's)."""
    return Path(cache or run["session"]["cache"]) / f"{run['method']}-{run['key']}"


def is_done(run: dict, cache: str | Path | None = None) -> bool:
    """Has planned ``run`` completed its epochs in the run cache?"""
    return completed_epochs(run_folder(run, cache)) >= int(run["epochs"])


def log_path(run: dict, logs: str | Path) -> Path:
    return Path(logs) / f"{run['method']}-{run['key']}.log"


def _session(run: dict, cache: str | Path | None, data_root: str | Path | None, device: str):
    from .notebook import start

    s = run["session"]
    return start(profile=s["profile"], device=device, data_root=str(data_root or s["data_root"]),
                 output_dir="build/course/train", seed=s.get("seed"), epochs=s.get("epochs"),
                 image_size=s.get("image_size"), classes=s.get("classes"),
                 max_images_per_class=s.get("max_images_per_class"), steps_per_epoch=s.get("steps_per_epoch"),
                 cache=str(cache or s["cache"]))


def _train_here(run: dict, cache, data_root, device: str) -> str:
    """Train (or load) ``run`` in this process through ``S.trained``; returns the action."""
    from .notebook import DataRef

    S = _session(run, cache, data_root, device)
    data = DataRef(**run["data"]) if isinstance(run["data"], dict) else run["data"]
    model, cached = S.trained(run["method"], data, **run["changes"])
    if cached.key != run["key"]:
        raise RunError(f"the plan says key {run['key']} but this machine computes {cached.key} for the same "
                       "request: the data, zsadlab or the parameters differ; make the plan here again")
    return cached.action


def train_planned(run: dict, logs: str | Path, cache: str | Path | None = None, data_root: str | Path | None = None,
                  gpus: int = 1, device: str = "auto") -> dict:
    """Train planned ``run`` (a ``runs`` entry of the plan JSON), its output appended to its log;
    with ``gpus`` > 1 as ``torchrun --standalone --nproc_per_node gpus`` (DDP). Returns
    ``{"key", "action", "seconds", "log"}``; raises with the log path when the run fails."""
    log = log_path(run, logs)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if gpus > 1:
        spec = log.with_suffix(".json")  # everything the ranks need (no options after torchrun's script name)
        spec.write_text(json.dumps({"run": run, "cache": None if cache is None else str(cache),
                                    "data_root": None if data_root is None else str(data_root), "device": device}),
                        encoding="utf-8")
        with open(log, "a", encoding="utf-8") as out:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                       "-m", "zsadlab.grid", str(spec)]
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise RunError(f"run {run['method']}-{run['key']} failed under torchrun; see {log}")
        action = "trained"
    else:
        with open(log, "a", encoding="utf-8") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                action = _train_here(run, cache, data_root, device)
            except Exception as err:
                print(f"FAILED: {type(err).__name__}: {err}", file=out)
                raise RunError(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; see {log}") from err
    seconds = round(time.perf_counter() - start, 2)
    if action == "trained":  # the pack's ledger reports it (a run loaded from the cache keeps its first time)
        from .pack import WALL_TIME_FILE

        write_json_atomic({"seconds": seconds, "gpus": gpus, "device": device},
                          run_folder(run, cache) / WALL_TIME_FILE)
    return {"key": run["key"], "action": action, "seconds": seconds, "log": str(log)}


# --- executors -----------------------------------------------------------------------------------------
_GPUS = None  # this worker's GPU queue (local executor)


def _pin_gpu(gpus) -> None:
    """Worker initializer: take one GPU id from the shared queue and make it the only visible one."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def _local(runs: list[dict], options: dict, workers: int, gpu_ids: Sequence[int]) -> Callable:
    context = multiprocessing.get_context("spawn")
    queue = None
    if gpu_ids:
        queue = context.Queue()
        for gpu in gpu_ids[:workers]:
            queue.put(gpu)
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_pin_gpu,
                                                  initargs=(queue,))
    futures = {pool.submit(train_planned, run, **options): run for run in runs}

    def finished():
        with pool:
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future.result
    return finished


def _submitit(runs: list[dict], options: dict, executor: str, workers: int, gpus_per_run: int,
              partition: str | None, time_min: int, logs: Path) -> Callable:
    import submitit

    ex = submitit.AutoExecutor(folder=logs / "submitit", cluster=SUBMITIT_CLUSTERS[executor])
    params = dict(timeout_min=time_min, gpus_per_node=gpus_per_run, tasks_per_node=1, nodes=1,
                  slurm_array_parallelism=workers)
    if partition:
        params["slurm_partition"] = partition
    ex.update_parameters(**params)
    jobs = ex.map_array(train_planned, runs, *([options[k]] * len(runs) for k in ("logs", "cache", "data_root",
                                                                                   "gpus", "device")))
    by_job = dict(zip((job.job_id for job in jobs), runs))

    def finished():
        for job in submitit.helpers.as_completed(jobs):
            yield by_job[job.job_id], job.result
    return finished


def train_plan(runs: Sequence[dict], executor: str = "local", workers: int = 1, logs: str | Path = "build/course/logs",
               cache: str | Path | None = None, data_root: str | Path | None = None, gpus_per_run: int = 1,
               partition: str | None = None, time_min: int = 240, device: str = "auto",
               gpu_ids: Sequence[int] | None = None, echo: Callable[[str], None] = print) -> dict:
    """Train every run of ``runs`` not yet in the run cache; returns ``{"trained", "skipped", "failed"}``
    (lists of keys; a failure does not stop the others). One line per run through ``echo``."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers < 1 or gpus_per_run < 1:
        raise UserError("--workers and --gpus-per-run must be positive integers")
    missing = [r for r in runs if not r.get("key")]
    if missing:
        raise UserError(f"{len(missing)} run(s) of the plan have no key ({missing[0]['needs']}); prepare the data "
                        "and make the plan again")
    logs = Path(logs)
    logs.mkdir(parents=True, exist_ok=True)
    report = {"trained": [], "skipped": [], "failed": []}
    todo = []
    for run in runs:
        if is_done(run, cache):
            report["skipped"].append(run["key"])
            echo(f"{run['method']}-{run['key']}: already in the run cache, skipped")
        else:
            todo.append(run)
    if not todo:
        return report
    if gpu_ids is None and executor == "local" and device != "cpu":
        import torch

        gpu_ids = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    options = {"logs": str(logs), "cache": cache, "data_root": data_root, "gpus": gpus_per_run, "device": device}
    finished = (_local(todo, options, workers, gpu_ids or []) if executor == "local" else
                _submitit(todo, options, executor, workers, gpus_per_run, partition, time_min, logs))
    for index, (run, result) in enumerate(finished(), start=1):
        name = f"[{index}/{len(todo)}] {run['method']}-{run['key']}"
        try:
            outcome = result()
        except Exception as err:  # one failing run is reported; the others go on
            report["failed"].append(run["key"])
            echo(f"{name}: FAILED ({str(err).splitlines()[0] if str(err) else type(err).__name__}); log {log_path(run, logs)}")
            continue
        report["trained"].append(run["key"])
        echo(f"{name}: {outcome['action']} in {outcome['seconds']:.1f} s ({'; '.join(run.get('requested_by', []))})")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """One planned run on this rank under torchrun (what :func:`train_planned` launches for ``gpus`` > 1):
    ``python -m zsadlab.grid SPEC.json`` with ``{"run", "cache", "data_root", "device"}``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    print(_train_here(spec["run"], spec["cache"], spec["data_root"], spec["device"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
