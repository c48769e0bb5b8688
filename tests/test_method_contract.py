"""Every registered method fulfils the model protocol (methods.AnomalyModel / LearningModel).

Parametrised over ``method_names()`` plus two toy methods defined in this file - a learning one
whose adapter sits *inside* ``clip`` and a transductive one - registered without any edit to
``engine/``, ``profiles.py`` or ``cli.py``: build in smoke, predict shapes and finiteness (with
reference images for few-shot methods, a whole set for transductive ones), and for every learning
method one step -> checkpoint -> load, and a resumed run equal to an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from zsadlab import cli, engine, methods
from zsadlab.backbone import freeze, tiny_backbone, tiny_image_size
from zsadlab.checkpoints import read_checkpoint
from zsadlab.engine.training import RESUME_FILE
from zsadlab.errors import InputError
from zsadlab.methods import (
    AnomalyModel,
    LearningModel,
    Method,
    Recipe,
    Setup,
    clip_model_builder,
    get_method,
    learned_state,
    method_names,
    shuffled_batches,
)
from zsadlab.utils import save_torch_atomic

# --- a toy learning method: a head on CLIP's image embedding, placed inside ``clip`` -------------------


@dataclass(frozen=True)
class ToyHeadConfig:
    image_size: int = tiny_image_size("vit14-112")
    epochs: int = 2
    batch_size: int = 4


class ToyHead(nn.Module):
    """Image score = a small MLP (with BatchNorm) on CLIP's image embedding; the map is that score everywhere."""

    def __init__(self, clip, config: ToyHeadConfig = ToyHeadConfig()):
        super().__init__()
        self.config, self.clip = config, freeze(clip).eval()
        width = clip.visual.output_dim
        # inside clip on purpose: the resume state must follow trainable_state_dict, not "everything but clip.*"
        self.clip.visual.toy_head = nn.Sequential(nn.Linear(width, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return learned_state(self, "clip.visual.toy_head")

    def train(self, mode: bool = True) -> "ToyHead":
        super().train(mode)
        self.clip.eval()
        self.clip.visual.toy_head.train(mode)
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            embedding = self.clip.encode_image(images)  # [B, D]
        return self.clip.visual.toy_head(embedding)[:, 0]  # [B]

    @torch.no_grad()
    def predict(self, images, class_names):
        scores = self.logits(images).sigmoid()  # [B]
        return scores, scores[:, None, None].expand(-1, *images.shape[-2:])  # [B, S, S]


def toy_step(model: ToyHead, batch: dict) -> dict[str, torch.Tensor]:
    device = model.clip.visual.proj.device
    loss = nn.functional.binary_cross_entropy_with_logits(model.logits(batch["image"].to(device)),
                                                          batch["label"].to(device).float())
    return {"total": loss, "bce": loss}


def toy_save(model: ToyHead, out_dir: Path, epoch: int) -> Path:
    return save_torch_atomic({"head": model.trainable_state_dict()}, Path(out_dir) / f"head_{epoch}.pt")


def toy_load(model: ToyHead, path: Path) -> ToyHead:
    model.load_state_dict(read_checkpoint(path)["head"], strict=False)
    return model


TOY_HEAD = Method(
    name="toy_head", learns="heads", config_class=ToyHeadConfig, build=clip_model_builder(ToyHead),
    setups={"smoke": Setup(tiny_backbone("vit14-112"), ToyHeadConfig(), eval_batch_size=3)}, load=toy_load,
    recipe=Recipe(optimizer=lambda model, lr=None, betas=None: torch.optim.Adam(
        model.clip.visual.toy_head.parameters(), lr=lr or 1e-2), plan=shuffled_batches, step=toy_step, save=toy_save),
)


# --- a toy transductive method: how far each image is from the set's mean image -----------------------


@dataclass(frozen=True)
class ToySetConfig:
    image_size: int = 32


class ToySet(nn.Module):
    """Map = distance of each pixel to the mean image of the whole set; score = its mean. Records the set sizes."""

    def __init__(self, config: ToySetConfig = ToySetConfig()):
        super().__init__()
        self.config, self.set_sizes = config, []

    def predict(self, images, class_names):
        assert len(set(class_names)) == 1, "a transductive method gets one class's set at a time"
        self.set_sizes.append(len(images))
        maps = (images - images.mean(dim=0, keepdim=True)).abs().mean(dim=1)  # [N, S, S]
        return maps.flatten(1).mean(dim=1), maps


TOY_SET = Method(
    name="toy_set", learns="nothing", config_class=ToySetConfig, transductive=True, min_images=3,
    setups={"smoke": Setup(tiny_backbone("vit14-112"), ToySetConfig())},
    build=lambda setup, device, seed, **changes: ToySet(dataclasses.replace(setup.config, **changes)),
)

TOYS = {method.name: method for method in (TOY_HEAD, TOY_SET)}
ALL = sorted(set(method_names()) | set(TOYS))
LEARNING = sorted(set(n for n in method_names() if get_method(n).recipe) | {"toy_head"})


@pytest.fixture(autouse=True)
def toys(monkeypatch):
    """The toy methods, registered for each test and gone afterwards (no edit anywhere else)."""
    for name, method in TOYS.items():
        monkeypatch.setitem(methods._REGISTRY, name, method)


def inputs_of(name, model, roots):
    """Query images ``[N, 3, S, S]`` of one class (a whole set of ``min_images`` for a transductive method),
    its name, and for a few-shot method two normal reference images ``[2, 3, S, S]`` (else ``None``)."""
    spec = get_method(name)
    test_set = engine.dataset_for(model, roots["synthetic_ultrasound"])
    count = max(2, spec.min_images) if spec.transductive else 2
    images = torch.stack([test_set[i]["image"] for i in range(count)])  # [N, 3, S, S]
    if not spec.few_shot:
        return images, test_set.classes[0], None
    support = engine.dataset_for(model, roots["synthetic_ultrasound"], split="train")
    return images, test_set.classes[0], torch.stack([support[i]["image"] for i in range(2)])  # [K, 3, S, S]


def predictions(name, model, images, class_name, references):
    """``(scores, maps)`` of the method's predictor: the model, or the model with its references."""
    spec = get_method(name)
    predictor = spec.with_prompts(model, {class_name: references}) if spec.few_shot else model
    return predictor.predict(images, [class_name] * len(images))


@pytest.mark.parametrize("name", ALL)
def test_every_method_builds_in_smoke_and_fulfils_the_model_protocol(name, smoke, roots):
    spec = get_method(name)
    model = engine.build_model(name, smoke, device="cpu")
    assert isinstance(model.config, spec.config_class)
    images, class_name, references = inputs_of(name, model, roots)
    predictor = spec.with_prompts(model, {class_name: references}) if spec.few_shot else model
    assert isinstance(predictor, AnomalyModel)
    assert model.config.image_size > 0 and engine.eval_batch_size(model) >= 1
    assert spec.precision in methods.PRECISIONS
    if spec.recipe is None:
        return
    assert isinstance(model, LearningModel) and model.config.epochs >= 1 and model.config.batch_size >= 1
    trainable = model.trainable_state_dict()
    assert trainable and set(trainable) <= set(model.state_dict())
    optimised = {p.data_ptr() for group in spec.recipe.optimizer(model).param_groups for p in group["params"]}
    assert optimised <= {t.data_ptr() for t in trainable.values()}  # the resume state holds all it optimises


@pytest.mark.parametrize("name", ALL)
def test_predict_gives_finite_scores_and_maps_of_the_declared_shapes(name, smoke, roots):
    model = engine.build_model(name, smoke, device="cpu")
    images, class_name, references = inputs_of(name, model, roots)
    scores, maps = predictions(name, model, images, class_name, references)
    size = model.config.image_size
    assert scores.shape == (len(images),) and torch.isfinite(scores).all()
    assert maps is None or (maps.shape == (len(images), size, size) and torch.isfinite(maps).all())


@pytest.mark.parametrize("name", LEARNING)
def test_one_step_checkpoint_load_and_a_resumed_run_equals_an_uninterrupted_one(name, smoke, roots, tmp_path):
    spec = get_method(name)
    build = lambda: engine.build_model(name, smoke, device="cpu")  # noqa: E731
    whole = build()
    data = engine.dataset_for(whole, roots["synthetic_industrial"], split=spec.recipe.training_split,
                              require_masks=spec.recipe.require_masks)
    run = dict(max_steps_per_epoch=1, progress=False, batch_size=4)
    history = engine.train(whole, data, epochs=2, out_dir=tmp_path / "whole", **run)

    engine.train(build(), data, epochs=1, out_dir=tmp_path / "parts", **run)  # interrupted after epoch 1
    resumed = build()
    assert engine.train(resumed, data, epochs=2, out_dir=tmp_path / "parts", **run) == history
    expected = whole.trainable_state_dict()
    saved = read_checkpoint(tmp_path / "parts" / RESUME_FILE)["trainable"]
    assert set(saved) == set(expected)  # exactly the declared trainable state, nothing else
    for key, value in resumed.trainable_state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)

    loaded = engine.load_checkpoint(build(), spec.recipe.save(whole, tmp_path / "official", 2))
    inputs = inputs_of(name, whole, roots)
    torch.testing.assert_close(predictions(name, loaded, *inputs)[0], predictions(name, whole, *inputs)[0])


def test_the_toy_learning_methods_adapter_inside_clip_is_what_training_changes(smoke, roots, tmp_path):
    model = engine.build_model("toy_head", smoke, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine.fit(model, roots["synthetic_industrial"], epochs=1, out_dir=tmp_path, max_steps_per_epoch=2,
               progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("clip.visual.toy_head.") for k in changed)
    assert (tmp_path / "head_1.pt").is_file()


def test_a_transductive_method_is_evaluated_with_each_class_whole_test_set_at_once(smoke, roots):
    model = engine.build_model("toy_set", smoke, device="cpu")
    test_set = engine.dataset_for(model, roots["synthetic_ultrasound"])
    table = engine.evaluate(model, test_set, batch_size=2, progress=False)  # batch_size does not split a set
    assert model.set_sizes == [len(test_set.subset(c)) for c in test_set.classes]
    assert len(table.rows) == len(test_set.classes)
    pred = engine.predict_dataset(model, test_set, progress=False)
    assert pred["paths"] == [str(s.path) for s in test_set.samples]  # the dataset's order, whatever the sets


def test_a_transductive_method_refuses_a_class_smaller_than_its_minimum(smoke, roots):
    model = engine.build_model("toy_set", smoke, device="cpu")
    test_set = engine.dataset_for(model, roots["synthetic_ultrasound"])
    small = test_set.subset(test_set.classes[0]).budget(max_images_per_class=2, seed=0)
    with pytest.raises(InputError, match="needs at least 3 images per class"):
        engine.predict_dataset(model, small, progress=False)


def test_zsadlab_predict_hands_a_transductive_method_the_folder_as_one_set(roots, tmp_path, capsys, monkeypatch):
    folder = roots["synthetic_ultrasound"] / "thyroid" / "test" / "nodule"
    images = sorted(folder.glob("*.png"))
    built = []
    real_build = engine.build_model
    monkeypatch.setattr(engine, "build_model", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    assert cli.main(["predict", "--method", "toy_set", "--profile", "smoke", str(folder),
                     "--out", str(tmp_path / "out")]) == 0
    assert built[0].set_sizes == [len(images)]
    few = tmp_path / "few"
    few.mkdir()
    for image in images[:2]:
        (few / image.name).write_bytes(image.read_bytes())
    capsys.readouterr()
    assert cli.main(["predict", "--method", "toy_set", "--profile", "smoke", str(few),
                     "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "toy_set scores the images as one set and needs at least 3 images" in err[0]
