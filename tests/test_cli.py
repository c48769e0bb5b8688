"""The ``zsadlab`` train / test / predict commands, end to end in the smoke profile."""
import csv
import dataclasses

import numpy as np
import pytest
import torch

from zsadlab import cli, engine
from zsadlab.data import ensure_dataset
from zsadlab.profiles import get_profile


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in ("synthetic_industrial", "synthetic_ultrasound"):
        ensure_dataset(name, root)
    return root


@pytest.mark.slow
def test_train_then_test_then_predict_anomalyclip(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--profile", "smoke", "--data-root", str(data_root), "--out", str(run)]) == 0
    assert (run / "epoch_1.pth").is_file()
    out = tmp_path / "results"
    assert cli.main(["test", "--profile", "smoke", "--data-root", str(data_root), "--checkpoint",
                     str(run / "epoch_1.pth"), "--out", str(out)]) == 0
    assert "aupro_mvtec" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows[-1]["class"] == "mean" and (out / "results.json").is_file()
    images = data_root / "synthetic_ultrasound" / "thyroid" / "test" / "nodule"
    preds = tmp_path / "preds"
    assert cli.main(["predict", "--profile", "smoke", "--checkpoint", str(run / "epoch_1.pth"),
                     str(images), "--out", str(preds)]) == 0
    scores = list(csv.DictReader((preds / "scores.csv").open()))
    assert len(scores) == len(list(images.glob("*.png"))) == len(list(preds.glob("*_overlay.png")))
    assert all(0 <= float(r["score"]) <= 1 for r in scores)


@pytest.mark.slow
def test_inctrl_train_and_few_shot_test_with_saved_prompt_sets(data_root, tmp_path, capsys):
    run = tmp_path / "inctrl"
    assert cli.main(["train", "--method", "inctrl", "--profile", "smoke", "--data-root", str(data_root),
                     "--out", str(run)]) == 0
    out = tmp_path / "results"
    args = ["test", "--method", "inctrl", "--profile", "smoke", "--data-root", str(data_root),
            "--checkpoint", str(run / "checkpoint_1.pyth"), "--shots", "2", "--seeds", "0", "1", "--out", str(out)]
    assert cli.main(args) == 0
    first = (out / "results.csv").read_text()
    assert len(list((out / "prompts").rglob("*_k2_seed*.json"))) == 2
    assert cli.main(args) == 0  # the saved prompt sets are reused: same table
    assert (out / "results.csv").read_text() == first
    assert "image_auroc_std" in capsys.readouterr().out


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert cli.main(["test", "--profile", "smoke", "--checkpoint", str(tmp_path / "missing.pth"),
                     "--data-root", str(tmp_path)]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert cli.main(["predict", "--profile", "smoke", str(tmp_path / "nothing")]) == 2
    assert "neither an image file nor a folder" in capsys.readouterr().err
    assert cli.main(["test", "--profile", "smoke", "--dataset", "mvtec", "--data-root", str(tmp_path)]) == 2
    assert "zsadlab data prepare" in capsys.readouterr().err


def test_inctrl_predict_without_normal_references_says_what_to_pass(tmp_path, data_root, capsys):
    image = next((data_root / "synthetic_ultrasound" / "thyroid" / "test" / "nodule").glob("*.png"))
    assert cli.main(["predict", "--method", "inctrl", "--profile", "smoke", str(image)]) == 2
    assert "--prompts" in capsys.readouterr().err


def test_testing_without_a_checkpoint_says_the_prompts_are_untrained(data_root, capsys):
    assert cli.main(["test", "--method", "clip", "--profile", "smoke", "--data-root", str(data_root)]) == 0
    assert "untrained" not in capsys.readouterr().err  # the hand-written ensemble has nothing to train
    assert cli.main(["test", "--profile", "smoke", "--data-root", str(data_root)]) == 0
    assert "untrained" in capsys.readouterr().err


@pytest.mark.parametrize("args,option", [(["train", "--epochs", "0"], "--epochs"),
                                         (["train", "--epochs", "-3"], "--epochs"),
                                         (["train", "--batch-size", "0"], "--batch-size"),
                                         (["test", "--method", "inctrl", "--shots", "0"], "--shots")])


def test_zero_or_negative_counts_are_refused_not_replaced_by_defaults(args, option, capsys):
    assert cli.main([*args, "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {option} must be at least 1") and len(err.splitlines()) == 1


def test_a_device_that_does_not_exist_is_one_line(capsys):
    assert cli.main(["test", "--profile", "smoke", "--device", "bogus"]) == 2
    assert "not a device name" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["test", "--profile", "smoke", "--device", "cuda"]) == 2
        assert "no cuda device" in capsys.readouterr().err


def test_options_a_method_would_silently_ignore_are_refused(tmp_path, capsys):
    image = tmp_path / "x.png"
    assert cli.main(["predict", "--profile", "smoke", "--prompts", str(tmp_path), str(image)]) == 2
    assert "--prompts is for few-shot methods" in capsys.readouterr().err
    assert cli.main(["test", "--method", "clip", "--profile", "smoke", "--checkpoint", str(tmp_path / "a.pth")]) == 2
    assert "clip learns nothing" in capsys.readouterr().err
    assert cli.main(["train", "--method", "clip_ac", "--profile", "smoke"]) == 2
    assert "nothing to train" in capsys.readouterr().err


def test_a_complete_run_says_so_and_another_methods_resume_is_refused(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    model = engine.build_model("anomalyclip", get_profile("smoke", quiet=True), device="cpu")
    data = engine.dataset_for(model, data_root / "synthetic_industrial", require_masks=True)
    engine.train(model, data, epochs=1, out_dir=run, max_steps_per_epoch=1, progress=False)
    common = ["--profile", "smoke", "--data-root", str(data_root), "--out", str(run)]
    assert cli.main(["train", *common]) == 0
    assert "already complete (1 epochs); nothing was trained" in capsys.readouterr().out
    assert cli.main(["train", "--method", "coop", *common]) == 2
    assert "holds another run (method" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "synthetic_ultrasound", *common]) == 2
    assert "holds another run" in capsys.readouterr().err


def test_ctrl_c_during_training_says_what_was_saved_and_how_to_resume(monkeypatch, data_root, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "fit", interrupted)
    assert cli.main(["train", "--profile", "smoke", "--data-root", str(data_root), "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted: 0 epoch(s) saved" in err and "again to resume" in err


def test_vand_zero_shot_and_few_shot_test_and_predict_in_smoke(data_root, tmp_path, capsys):
    common = ["--profile", "smoke", "--data-root", str(data_root)]
    assert cli.main(["test", "--method", "vand", *common]) == 0
    assert "pixel_auroc" in capsys.readouterr().out
    out = tmp_path / "fewshot"
    assert cli.main(["test", "--method", "vand_fewshot", "--shots", "2", *common, "--out", str(out)]) == 0
    assert "image_auroc_std" in capsys.readouterr().out and (out / "results.json").is_file()
    images = data_root / "synthetic_ultrasound" / "thyroid" / "test" / "nodule"
    preds = tmp_path / "preds"
    assert cli.main(["predict", "--method", "vand", "--profile", "smoke", str(images), "--out", str(preds)]) == 0
    rows = list(csv.DictReader((preds / "scores.csv").open()))
    assert len(rows) == len(list(images.glob("*.png"))) == len(list(preds.glob("*_overlay.png")))


def test_pull_registers_a_file_given_with_from_and_names_the_choices(monkeypatch, tmp_path, capsys):
    import dataclasses

    from zsadlab import pretrained

    content = b"a stand-in for the official file"
    (tmp_path / "epoch_15.pth").write_bytes(content)
    monkeypatch.setenv("ZSADLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(pretrained.PRETRAINED, "anomalyclip-visa", dataclasses.replace(
        pretrained.PRETRAINED["anomalyclip-visa"], git_sha1=pretrained.git_blob_sha1(tmp_path / "epoch_15.pth")))
    assert cli.main(["pull", "anomalyclip-visa", "--from", str(tmp_path / "epoch_15.pth")]) == 0
    kept = tmp_path / "home" / "anomalyclip-visa" / "epoch_15.pth"
    assert kept.read_bytes() == content and str(kept) in capsys.readouterr().out
    assert cli.main(["pull", "inctrl", "--from", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.pth" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        cli.main(["pull", "nope"])
    usage = capsys.readouterr().err
    assert all(name in usage for name in sorted(pretrained.PRETRAINED))


@pytest.mark.parametrize("command", [["train"], ["test"], ["predict", "IMAGE"]])
def test_an_out_folder_below_a_file_fails_in_one_line_before_the_model_is_built(
        command, monkeypatch, data_root, tmp_path, capsys):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the output folder was checked")

    monkeypatch.setattr(engine, "build_model", must_not_build)
    (tmp_path / "file").write_text("the user's file")
    image = next((data_root / "synthetic_ultrasound" / "thyroid" / "test" / "nodule").glob("*.png"))
    argv = [str(image) if part == "IMAGE" else part for part in command]
    assert cli.main([*argv, "--profile", "smoke", "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "is below" in err and len(err.splitlines()) == 1
    assert (tmp_path / "file").read_text() == "the user's file"


def test_prepare_warnings_are_printed_as_one_plain_line(monkeypatch, tmp_path, capsys):
    import warnings

    def prepare(name, **kwargs):
        warnings.warn("skipped 1 unreadable image: raw/bad.png", UserWarning)
        return tmp_path / name

    monkeypatch.setattr(cli, "prepare", prepare)
    assert cli.main(["data", "prepare", "mpdd", "--raw", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "warning: skipped 1 unreadable image: raw/bad.png\n"
    assert "prepared mpdd" in captured.out


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_into_a_folder_of_the_users_files_is_refused_and_they_are_unchanged(data_root, tmp_path, capsys):
    userrun = tmp_path / "userrun"
    userrun.mkdir()
    (userrun / "epoch_1.pth").write_text("mine\n")
    before = _snapshot(userrun)
    assert cli.main(["train", "--profile", "smoke", "--data-root", str(data_root), "--out", str(userrun)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(userrun) in err and "epoch_1.pth" in err and "holds no run" in err
    assert _snapshot(userrun) == before and sorted(p.name for p in userrun.iterdir()) == ["epoch_1.pth"]


def test_predict_into_its_input_folder_is_refused_and_the_users_files_are_unchanged(tmp_path, write_image, capsys):
    inout = tmp_path / "inout"
    write_image(inout / "a.png")
    write_image(inout / "a_overlay.png", value=3)
    (inout / "scores.csv").write_text("my,own\n")
    before = _snapshot(inout)
    assert cli.main(["predict", "--method", "clip", "--profile", "smoke", str(inout), "--out", str(inout)]) == 2
    assert "holds the input image" in capsys.readouterr().err
    assert _snapshot(inout) == before


def test_a_second_train_on_the_same_out_exits_2_naming_the_folder_and_the_first_ones_pid(data_root, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "runs" / "c"
    repo = Path(__file__).resolve().parents[1]
    # The first writer: a real `zsadlab train` whose first step waits until the second one has finished.
    gate = tmp_path / "gate"
    first_code = ("import pathlib, sys, time; from zsadlab import cli, engine\n"
                  "real = engine.fit\n"
                  "def fit(*a, **k):\n    print('training', flush=True)\n"
                  f"    while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)\n"
                  "    return real(*a, **k)\n"
                  "engine.fit = fit\nsys.exit(cli.main(sys.argv[1:]))")
    common = ["train", "--profile", "smoke", "--data-root", str(data_root), "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    first = subprocess.Popen([sys.executable, "-c", first_code, *common, "--seed", "1"], stdout=subprocess.PIPE,
                             text=True, env=env, cwd=tmp_path)
    try:
        assert "training" in iter(lambda: first.stdout.readline().strip(), "")  # after the profile's banner
        second = subprocess.run([sys.executable, "-m", "zsadlab", *common, "--seed", "2"], capture_output=True,
                                text=True, env=env, cwd=tmp_path)
    finally:
        gate.touch()
    assert first.wait(timeout=1800) == 0
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1 and str(run) in second.stderr and f"pid {first.pid}" in second.stderr
    assert engine.run_record(run)["seed"] == 1 and engine.completed_epochs(run) == 1


@pytest.mark.parametrize("evil", ["../../../../pwned", "ABSOLUTE"])
def test_a_meta_json_class_name_that_is_a_path_is_refused_naming_the_file(evil, data_root, tmp_path, capsys):
    import json
    import shutil

    if evil == "ABSOLUTE":
        evil = str(tmp_path / "outside" / "pwned")

    root = tmp_path / "data"
    shutil.copytree(data_root / "synthetic_industrial", root / "evil")
    meta_path = root / "evil" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for split in meta.values():
        name = sorted(split)[0]
        split[evil] = [{**item, "cls_name": evil} for item in split.pop(name)]
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "res" / "evil"
    assert cli.main(["test", "--profile", "smoke", "--method", "inctrl", "--dataset", "evil", "--data-root",
                     str(root), "--out", str(out)]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note:")]
    assert len(error) == 1 and str(meta_path) in error[0] and evil in error[0]
    assert not list(tmp_path.rglob("*pwned*")) and not list(out.rglob("*.json"))


def test_an_image_path_starting_with_a_dash_says_to_put_double_dash_before_it(tmp_path, write_image, monkeypatch,
                                                                               capsys):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "-x.png")
    assert cli.main(["predict", "--method", "clip", "--profile", "smoke", "-x.png", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "-x.png" in err and "put -- before" in err
    assert cli.main(["predict", "--method", "clip", "--profile", "smoke", "--out", "out", "--", "-x.png"]) == 0
    assert (tmp_path / "out" / "scores.csv").is_file()


def test_a_bogus_zsadlab_device_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("ZSADLAB_DEVICE", "bogus")
    assert cli.main(["test", "--method", "clip", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "$ZSADLAB_DEVICE 'bogus' is not a device name" in err and "None" not in err


def test_ctrl_c_during_prepare_is_one_line_with_exit_130_and_leaves_nothing(monkeypatch, tmp_path, capsys):
    from zsadlab.data import registry

    def interrupted(writer, seed):
        writer.normal(np.zeros((8, 8, 3), np.uint8), "brick", "000.png", "train")
        raise KeyboardInterrupt

    entry = dataclasses.replace(registry.entry("synthetic_industrial"), generate=interrupted)
    monkeypatch.setitem(registry.REGISTRY, "synthetic_industrial", entry)
    assert cli.main(["data", "prepare", "synthetic_industrial", "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted: nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_a_class_with_fewer_normals_than_shots_is_one_line_and_the_other_rows_are_kept(data_root, tmp_path, capsys):
    import json
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root / "synthetic_industrial", root / "short")
    meta_path = root / "short" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["train"]["brick"] = meta["train"]["brick"][:2]
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "res"
    assert cli.main(["test", "--profile", "smoke", "--method", "inctrl", "--dataset", "short", "--data-root",
                     str(root), "--shots", "4", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: short/brick has 2 normal image(s), fewer than the k=4 prompts it needs: its row is left "
        "undefined ('-'); use at most 2 shots for it."]
    rows = {r["class"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["brick"]["image_auroc"] == "nan" and float(rows["coffee"]["image_auroc"]) >= 0
    assert float(rows["gravel"]["image_auroc"]) >= 0 and rows["mean"]["image_auroc"] != "nan"


@pytest.fixture
def normals_only(data_root, tmp_path):
    """A copy of synthetic_industrial whose meta.json lists only its normal images."""
    import json
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root / "synthetic_industrial", root / "normals")
    meta_path = root / "normals" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta = {split: {c: [i for i in items if not i["anomaly"]] for c, items in classes.items()}
            for split, classes in meta.items()}
    meta_path.write_text(json.dumps(meta))
    return root


def test_anomalyclip_trained_without_anomalies_warns_in_one_line(normals_only, tmp_path, capsys):
    assert cli.main(["train", "--profile", "smoke", "--dataset", "normals", "--data-root", str(normals_only),
                     "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "training images are normal" in warned[0] and "no anomalous" in warned[0]


def test_inctrl_trained_on_one_label_data_is_one_line_and_leaves_no_run_folder(normals_only, tmp_path, capsys):
    run = tmp_path / "runs" / "inctrl"
    assert cli.main(["train", "--method", "inctrl", "--profile", "smoke", "--dataset", "normals", "--data-root",
                     str(normals_only), "--out", str(run)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no anomalous ones" in errors[0] and "normals" in errors[0]
    assert not run.exists()


def test_calibrate_then_predict_adds_decisions_and_refuses_another_checkpoints_calibration(tmp_path, write_image,
                                                                                           capsys):
    from zsadlab.anomalyclip import save_official_checkpoint

    for i in range(4):
        write_image(tmp_path / "normals" / f"n{i}.png", size=(40, 40))
    model = engine.build_model("anomalyclip", get_profile("smoke", quiet=True), device="cpu")
    save_official_checkpoint(model, tmp_path / "a.pth")
    with torch.no_grad():
        model.prompt_learner.ctx_pos.add_(0.1)
    save_official_checkpoint(model, tmp_path / "b.pth")
    common = ["--profile", "smoke", "--checkpoint", str(tmp_path / "a.pth")]
    assert cli.main(["calibrate", *common, "--normals", str(tmp_path / "normals"), "--alpha", "0.01",
                     "--out", str(tmp_path / "cal.json")]) == 2
    assert "4 normal images allow α ≥ 1/(n+1)" in capsys.readouterr().err
    assert cli.main(["calibrate", *common, "--normals", str(tmp_path / "normals"), "--alpha", "0.2",
                     "--out", str(tmp_path / "cal.json")]) == 0
    assert "image threshold" in capsys.readouterr().out
    out = tmp_path / "preds"
    assert cli.main(["predict", *common, str(tmp_path / "normals"), "--out", str(out),
                     "--calibration", str(tmp_path / "cal.json")]) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert all(r["anomalous"] == str(float(r["score"]) > float(r["threshold"])).lower() for r in rows)
    assert cli.main(["predict", "--profile", "smoke", "--checkpoint", str(tmp_path / "b.pth"),
                     str(tmp_path / "normals"), "--out", str(tmp_path / "other"),
                     "--calibration", str(tmp_path / "cal.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cal.json was made with another checkpoint" in err and "\n" not in err


def test_calibrate_refuses_a_test_set_normalised_method_in_one_line(tmp_path, write_image, capsys):
    write_image(tmp_path / "normals" / "n.png")
    assert cli.main(["calibrate", "--method", "vand_fewshot", "--profile", "smoke", "--prompts",
                     str(tmp_path / "normals"), "--normals", str(tmp_path / "normals"), "--alpha", "0.5",
                     "--out", str(tmp_path / "cal.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot calibrate vand_fewshot") and "normalised" in err and "\n" not in err
