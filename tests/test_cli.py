"""The ``zsadlab`` train / test / predict commands, end to end in the smoke profile."""
import csv

import pytest

from zsadlab import cli
from zsadlab.data import ensure_dataset


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
            "--checkpoint", str(run / "checkpoint.pt"), "--shots", "2", "--seeds", "0", "1", "--out", str(out)]
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
