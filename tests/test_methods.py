"""The method registry (zsadlab/methods.py): a new method is one entry; engine and CLI need no change."""
import csv
import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch

from zsadlab import cli, engine, inctrl, methods
from zsadlab.backbone import tiny_backbone
from zsadlab.data import ensure_dataset
from zsadlab.methods import Method, Setup, get_method, method_names, register_method
from zsadlab.profiles import get_profile


@dataclass(frozen=True)
class ToyConfig:
    image_size: int = 32


class Brightness(torch.nn.Module):
    """A method that learns nothing: the image score is its mean brightness, the map its brightness."""

    def __init__(self, config: ToyConfig = ToyConfig(), with_maps: bool = True):
        super().__init__()
        self.config, self.with_maps = config, with_maps

    def predict(self, images, class_names):
        brightness = images.mean(dim=1)  # [B, S, S]
        return brightness.flatten(1).mean(dim=1), brightness if self.with_maps else None


@pytest.fixture
def toy_methods():
    """Two toy methods registered from this file (one without maps), removed afterwards."""
    names = {"toy_brightness": True, "toy_scores_only": False}
    for name, with_maps in names.items():
        register_method(Method(name=name, learns="nothing", config_class=ToyConfig,
                               setups={"smoke": Setup(tiny_backbone("vit14-112"), ToyConfig())},
                               build=lambda setup, device, seed, m=with_maps, **changes: Brightness(
                                   dataclasses.replace(setup.config, **changes), with_maps=m)))
    yield list(names)
    for name in names:
        methods._REGISTRY.pop(name)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ensure_dataset("synthetic_ultrasound", root)
    return root


def test_anomalyclip_its_presets_and_inctrl_are_registered_with_what_they_learn():
    learns = {name: get_method(name).learns for name in method_names()}
    assert learns["anomalyclip"] == learns["anomalyclip_multilayer"] == learns["coop"] == "prompts"
    assert learns["clip"] == learns["clip_ac"] == "nothing" and learns["inctrl"] == "heads"
    assert get_method("inctrl").few_shot and not get_method("anomalyclip").few_shot
    assert get_method("anomalyclip").seed == 111


def test_a_learning_method_without_a_recipe_is_refused_at_registration():
    with pytest.raises(ValueError, match="recipe"):
        Method(name="broken", learns="prompts", build=lambda *a, **k: None)
    with pytest.raises(ValueError, match="learns must be one of"):
        Method(name="broken", learns="everything", build=lambda *a, **k: None)


def test_an_unknown_method_is_named_with_the_choices():
    with pytest.raises(ValueError, match="unknown method 'nope'.*anomalyclip"):
        engine.build_model("nope", get_profile("smoke", quiet=True))


def test_a_toy_method_registered_here_builds_and_evaluates_without_engine_changes(toy_methods, data_root):
    smoke = get_profile("smoke", quiet=True)
    for name in toy_methods:
        model = engine.build_model(name, smoke, device="cpu", image_size=48)
        assert model.config.image_size == 48
        table = engine.evaluate(model, engine.dataset_for(model, data_root / "synthetic_ultrasound"), progress=False)
        assert 0 <= table.mean["image_auroc"] <= 1
        pixel_defined = not math.isnan(table.mean["pixel_auroc"])
        assert pixel_defined == (name == "toy_brightness")  # no maps: pixel metrics are undefined, not an error


def test_a_toy_method_runs_through_zsadlab_test_and_predict(toy_methods, data_root, tmp_path, capsys):
    out = tmp_path / "results"
    assert cli.main(["test", "--method", "toy_brightness", "--profile", "smoke", "--data-root", str(data_root),
                     "--out", str(out)]) == 0
    assert "image_auroc" in capsys.readouterr().out
    assert list(csv.DictReader((out / "results.csv").open()))[-1]["class"] == "mean"
    images = data_root / "synthetic_ultrasound" / "thyroid" / "test" / "nodule"
    preds = tmp_path / "preds"
    assert cli.main(["predict", "--method", "toy_brightness", "--profile", "smoke", str(images),
                     "--out", str(preds)]) == 0
    assert len(list(csv.DictReader((preds / "scores.csv").open()))) == len(list(images.glob("*.png")))
    assert len(list(preds.glob("*_overlay.png"))) == len(list(images.glob("*.png")))


def test_vand_is_registered_zero_shot_and_few_shot_with_the_official_recipe():
    from zsadlab import vand

    zero, few = get_method("vand"), get_method("vand_fewshot")
    assert zero.learns == few.learns == "heads" and zero.seed == few.seed == 111
    assert not zero.few_shot and few.with_prompts is vand.VANDFewShot
    assert zero.class_scores is None and few.class_scores is vand.normalise_fewshot_scores
    assert zero.recipe is few.recipe and zero.load is few.load is vand.load_official_checkpoint
    recipe = zero.recipe
    assert (recipe.training_split, recipe.require_masks) == ("test", True)  # like AnomalyCLIP: test split + masks
    assert recipe.plan is vand.training_plan and recipe.items is vand.MosaicItems  # shuffled, with mosaics
    assert recipe.step is vand.batch_losses and recipe.save is vand.save_epoch_checkpoint
    assert recipe.for_dataset is vand.config_for_dataset  # train.sh: the run depends on the training set
    model = engine.build_model("vand", get_profile("smoke", quiet=True), device="cpu")
    optimizer = recipe.optimizer(model)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == pytest.approx(1e-3) and optimizer.defaults["betas"] == (0.5, 0.999)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in model.trainable_linearlayer.parameters()}


def test_each_method_declares_the_official_test_transform_of_its_images():
    resize = {name: get_method(name).resize for name in method_names()}
    assert resize.pop("inctrl") == "shorter_side_center_crop"  # official Resize(240) + CenterCrop(240)
    assert set(resize.values()) == {"squash"}  # AnomalyCLIP, its baselines, VAND
    with pytest.raises(ValueError, match="resize"):
        Method(name="broken", learns="nothing", build=lambda *a, **k: None, resize="stretch")


def test_inctrl_trains_on_the_official_inctrl_train_split_read_from_its_recipe(monkeypatch, data_root):
    assert inctrl.RECIPE.training_split == "inctrl_train"
    seen = {}

    def record(model, dataset, *args, **kwargs):
        seen["split"], seen["labels"] = dataset.split, set(dataset.labels.tolist())
        return {"epoch_total": []}

    monkeypatch.setattr(engine.training, "train", record)
    model = engine.build_model("inctrl", get_profile("smoke", quiet=True), device="cpu")
    engine.fit(model, data_root / "synthetic_ultrasound")
    assert seen == {"split": "inctrl_train", "labels": {0, 1}}  # normals and the test defects


def test_precision_is_declared_per_method_vand_and_musc_fp16_autocast_on_cuda_the_others_fp32():
    from zsadlab.methods import run_precision

    declared = {name: get_method(name).precision for name in method_names()}
    assert declared.pop("vand") == declared.pop("vand_fewshot") == "fp16"  # official train.py / test.py autocast
    assert declared.pop("musc") == "fp16"  # official musc.py:161, 193
    assert set(declared.values()) == {"fp32"}  # AnomalyCLIP, its baselines, InCTRL, WinCLIP
    for name in method_names():
        spec = get_method(name)
        assert run_precision(spec, "cuda") == spec.precision and run_precision(spec, "cuda:1") == spec.precision
        assert run_precision(spec, "cuda", amp=True) == "fp16" and run_precision(spec, "cuda", amp=False) == "fp32"
        assert {run_precision(spec, device, amp) for device in ("cpu", "mps") for amp in (None, True, False)} == {"fp32"}
    with pytest.raises(ValueError, match="precision"):
        Method(name="broken", learns="nothing", build=lambda *a, **k: None, precision="bf16")


def test_the_registry_imports_no_method_and_the_package_imports_the_built_ins_once():
    import ast
    from pathlib import Path

    import zsadlab

    package = Path(zsadlab.__file__).parent
    imported = {alias.name for node in ast.walk(ast.parse((package / "methods.py").read_text()))
                if isinstance(node, ast.ImportFrom) for alias in node.names} | \
               {node.module for node in ast.walk(ast.parse((package / "methods.py").read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"anomalyclip", "inctrl", "vand", "winclip"}
    lines = [line for line in (package / "__init__.py").read_text().splitlines() if line.startswith("from . import")]
    assert len(lines) == 1 and all(name in lines[0] for name in ("anomalyclip", "inctrl", "vand", "winclip"))


def test_each_method_declares_its_evaluation_batch_per_profile():
    smoke = get_profile("smoke", quiet=True)
    for name in ("anomalyclip", "inctrl", "vand", "winclip"):
        model = engine.build_model(name, smoke, device="cpu")
        assert engine.eval_batch_size(model) == get_method(name).setup("smoke").eval_batch_size == 4
        assert get_method(name).setup("full").eval_batch_size == 8


@pytest.mark.parametrize("first", ["zsadlab.methods", "zsadlab.profiles", "zsadlab.vand", "zsadlab.engine",
                                   "zsadlab.cli"])
def test_the_built_in_methods_are_registered_whichever_module_is_imported_first(first):
    import subprocess
    import sys

    code = f"import {first}; from zsadlab.methods import method_names; print(' '.join(method_names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert {"anomalyclip", "clip", "coop", "inctrl", "vand", "vand_fewshot", "winclip", "winclip_plus"} <= set(out)
