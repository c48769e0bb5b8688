"""course train: the plan's runs side by side through the one trainer; idempotent, resumable, failures isolated."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zsadlab import engine
from zsadlab.grid import is_done, run_folder, train_plan
from zsadlab.series import plan, session_for

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LOSSES = NOTEBOOKS / "04_global_local_optimization.ipynb"
REPO = NOTEBOOKS.parent


def _plan(tmp_path, **extra) -> list[dict]:
    params = {"profile": "smoke", "data_root": str(tmp_path / "data"), "steps_per_epoch": 1, **extra}
    return [r.as_json() for r in plan([LOSSES], params, cache=tmp_path / "cache")]


def _mtimes(run) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run_folder(run).glob("epoch_*.pth")}


def test_two_cpu_workers_train_every_run_once_and_a_rerun_trains_none(tmp_path):
    runs, lines = _plan(tmp_path), []
    report = train_plan(runs, workers=2, logs=tmp_path / "logs", device="cpu", echo=lines.append)
    assert sorted(report["trained"]) == sorted(r["key"] for r in runs) and not report["failed"]
    assert all(is_done(r) for r in runs) and len(lines) == 3 and all(" trained in " in line for line in lines)
    again = train_plan(runs, workers=2, logs=tmp_path / "logs", device="cpu", echo=lines.append)
    assert again["trained"] == [] and sorted(again["skipped"]) == sorted(r["key"] for r in runs)


def test_submitit_local_executor_trains_a_run_in_its_own_job(tmp_path):
    runs = _plan(tmp_path)[:1]
    report = train_plan(runs, executor="submitit-local", logs=tmp_path / "logs", device="cpu", echo=print)
    assert report["trained"] == [runs[0]["key"]] and is_done(runs[0])
    assert (tmp_path / "logs" / f"anomalyclip-{runs[0]['key']}.log").is_file()


def test_a_failing_run_is_reported_with_its_log_and_the_others_still_train(tmp_path):
    runs, lines = _plan(tmp_path), []
    runs[0]["key"] = "0000000000000000"  # not what this request keys to: the run refuses to train
    report = train_plan(runs, workers=1, logs=tmp_path / "logs", device="cpu", echo=lines.append)
    assert report["failed"] == ["0000000000000000"] and len(report["trained"]) == 2
    failed = next(line for line in lines if "FAILED" in line)
    log = Path(failed.rsplit("log ", 1)[1])
    assert log.is_file() and "0000000000000000" in log.read_text()


def test_a_partial_run_resumes_after_its_last_epoch(tmp_path):
    runs = _plan(tmp_path, epochs=2)
    S = session_for({"profile": "smoke", "data_root": str(tmp_path / "data"), "steps_per_epoch": 1, "epochs": 2},
                    cache=tmp_path / "cache")
    model, data, spec = S.training("anomalyclip", None, loss="global")
    assert spec.key == runs[0]["key"]
    engine.train(model, data, epochs=1, batch_size=spec.batch_size, out_dir=spec.folder(S.cache), seed=spec.seed,
                 max_steps_per_epoch=1, progress=False)  # a grid killed after this run's first epoch
    first = _mtimes(runs[0])
    train_plan(runs[:1], logs=tmp_path / "logs", device="cpu", echo=print)
    assert _mtimes(runs[0])["epoch_1.pth"] == first["epoch_1.pth"] and "epoch_2.pth" in _mtimes(runs[0])
    assert "epoch 2/2" in (tmp_path / "logs" / f"anomalyclip-{runs[0]['key']}.log").read_text()


def test_a_killed_grid_rerun_does_not_retrain_its_finished_runs(tmp_path):
    runs = _plan(tmp_path)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"runs": runs}))
    command = [sys.executable, "-m", "zsadlab", "course", "train", "--plan", str(plan_file), "--workers", "1",
               "--device", "cpu", "--logs", str(tmp_path / "logs")]
    grid = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    deadline = time.monotonic() + 900  # fails instead of hanging; one run takes seconds
    while not any(is_done(r) for r in runs) and grid.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(grid.pid, signal.SIGKILL)  # the whole grid, workers included
    grid.wait()
    finished = [r for r in runs if is_done(r)]
    assert finished, "no run finished before the kill"
    before = {r["key"]: _mtimes(r) for r in finished}
    report = train_plan(runs, logs=tmp_path / "logs", device="cpu", echo=print)
    assert set(before) <= set(report["skipped"]) and not report["failed"]
    assert all(_mtimes(r) == before[r["key"]] for r in finished) and all(is_done(r) for r in runs)


def test_a_run_asking_for_two_devices_trains_as_torchrun_ddp_inside_its_job(tmp_path):
    from zsadlab.grid import train_planned

    run = _plan(tmp_path)[0]
    outcome = train_planned(run, tmp_path / "logs", gpus=2, device="cpu")  # gloo on the CPU: the same launch
    assert outcome["action"] == "trained" and is_done(run)
    assert Path(outcome["log"]).read_text().count(": trained (") == 2  # one line per rank: two processes trained it
    record = json.loads((run_folder(run) / "run.json").read_text())
    assert record["completed_epochs"] == record["epochs"] == 1
