"""Engine: smoke training and evaluation end to end, checkpoints, resume, result tables."""
import math

import numpy as np
import pytest
import torch

from zsadlab.engine import ResultTable, build_model, dataset_for, evaluate, predict_dataset, train
from zsadlab.utils import seed_everything


@pytest.mark.slow
def test_smoke_train_one_epoch_then_zero_shot_on_ultrasound(smoke, roots, tmp_path):
    seed_everything(0)
    model = build_model("anomalyclip", smoke, device="cpu")
    history = train(model, dataset_for(model, roots["synthetic_industrial"], require_masks=True), epochs=1,
                    batch_size=smoke.config("anomalyclip").batch_size, out_dir=tmp_path / "run", progress=False)
    table = evaluate(model, dataset_for(model, roots["synthetic_ultrasound"]), progress=False)
    assert len(history["total"]) >= 1 and all(math.isfinite(v) for v in history["total"])
    assert (tmp_path / "run" / "epoch_1.pth").exists()
    assert set(torch.load(tmp_path / "run" / "epoch_1.pth", weights_only=True)) == {"prompt_learner"}
    mean = table.mean
    assert 0 <= mean["pixel_auroc"] <= 1 and 0 <= mean["aupro_mvtec"] <= 1


def test_training_changes_only_the_prompts_and_resume_continues_after_the_last_epoch(smoke, roots, tmp_path):
    model = build_model("anomalyclip", smoke, device="cpu")
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    ctx_before = model.prompt_learner.ctx_pos.detach().clone()
    data = dataset_for(model, roots["synthetic_industrial"], require_masks=True)
    first = train(model, data, epochs=1, batch_size=4, out_dir=tmp_path, max_steps_per_epoch=2, progress=False)
    assert all(torch.equal(clip_before[k], v) for k, v in model.clip.state_dict().items())
    assert not torch.equal(model.prompt_learner.ctx_pos, ctx_before)
    resumed = build_model("anomalyclip", smoke, device="cpu")
    history = train(resumed, data, epochs=2, batch_size=4, out_dir=tmp_path, max_steps_per_epoch=2, progress=False)
    assert history["total"][:2] == first["total"] and len(history["total"]) == 4
    assert len(history["epoch_total"]) == 2 and (tmp_path / "epoch_2.pth").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_same_seed_same_training(smoke, roots):
    runs = []
    for _ in range(2):
        model = build_model("anomalyclip", smoke, device="cpu", seed=1)
        data = dataset_for(model, roots["synthetic_industrial"], require_masks=True)
        runs.append(train(model, data, epochs=1, batch_size=4, max_steps_per_epoch=2, seed=5, progress=False)["total"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("method", ["clip", "clip_ac", "coop", "anomalyclip"])
def test_every_baseline_predicts_one_score_and_map_per_image(smoke, roots, method):
    model = build_model(method, smoke, device="cpu")
    data = dataset_for(model, roots["synthetic_ultrasound"])
    pred = predict_dataset(model, data, batch_size=3, progress=False)
    size = model.config.image_size
    assert pred["scores"].shape == (len(data),) and pred["maps"].shape == (len(data), size, size)
    assert len(pred["paths"]) == len(data)


def test_result_table_prints_saves_and_ignores_undefined_cells(tmp_path):
    table = ResultTable(rows=[{"class": "a", "image_auroc": 0.5, "image_ap": 0.6, "pixel_auroc": math.nan,
                               "pixel_ap": 0.1, "aupro_mvtec": 0.2, "aupro_anomalyclip": 0.3},
                              {"class": "b", "image_auroc": 1.0, "image_ap": 0.8, "pixel_auroc": 0.9,
                               "pixel_ap": 0.3, "aupro_mvtec": 0.4, "aupro_anomalyclip": 0.5}])
    assert table.mean["image_auroc"] == pytest.approx(0.75) and table.mean["pixel_auroc"] == pytest.approx(0.9)
    text = str(table)
    assert "mean" in text and "75.0" in text and "-" in text
    assert table.to_csv(tmp_path / "t.csv").read_text().splitlines()[0].startswith("class,image_auroc")
    assert '"mean"' in table.to_json(tmp_path / "t.json").read_text()


def test_inctrl_training_updates_only_heads_and_resumes(smoke, roots, tmp_path):
    model = build_model("inctrl", smoke, device="cpu")
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    data = dataset_for(model, roots["synthetic_industrial"])
    first = train(model, data, epochs=1, steps_per_epoch=2, batch_size=4, out_dir=tmp_path, progress=False)
    assert all(torch.equal(clip_before[k], v) for k, v in model.clip.state_dict().items())
    resumed = build_model("inctrl", smoke, device="cpu")
    history = train(resumed, data, epochs=2, steps_per_epoch=2, batch_size=4, out_dir=tmp_path, progress=False)
    assert history["total"][:2] == first["total"] and len(history["epoch_total"]) == 2
    assert (tmp_path / "checkpoint_1.pyth").is_file() and (tmp_path / "checkpoint_2.pyth").is_file()


def test_few_shot_table_is_reproducible_and_spreads_over_seeds(smoke, roots, tmp_path):
    from zsadlab.engine import evaluate_fewshot

    model = build_model("inctrl", smoke, device="cpu")
    test_set = dataset_for(model, roots["synthetic_ultrasound"])
    support = dataset_for(model, roots["synthetic_ultrasound"], split="train")
    tables = [evaluate_fewshot(model, test_set, support, shots=2, seeds=(0, 1, 2), prompt_dir=tmp_path,
                               progress=False) for _ in range(2)]
    assert tables[0].rows == tables[1].rows
    row = tables[0].rows[0]
    assert 0 <= row["image_auroc"] <= 1 and row["image_auroc_std"] >= 0
    assert len(list(tmp_path.rglob("*.json"))) == 3


@pytest.mark.slow
@pytest.mark.realdata
def test_few_shot_on_real_magnetic_tile_without_a_training_split(smoke, shared_data, tmp_path):
    from zsadlab.data import prepare
    from zsadlab.data.download import extract
    from zsadlab.engine import evaluate_fewshot

    raw = extract(shared_data / "magnetic_tile.tar", tmp_path / "raw")
    root = prepare("magnetic_tile", raw=raw, out=tmp_path / "magnetic_tile")
    model = build_model("inctrl", smoke, device="cpu")
    test_set = dataset_for(model, root)
    table = evaluate_fewshot(model, test_set, None, shots=4, seeds=(0,), prompt_dir=tmp_path / "prompts",
                             batch_size=32, progress=False)
    assert 0 <= table.rows[0]["image_auroc"] <= 1 and table.rows[0]["class"] == "magnetic_tile"


def test_zero_shot_baselines_refuse_training_with_the_reason(smoke, roots):
    model = build_model("clip_ac", smoke, device="cpu")
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, dataset_for(model, roots["synthetic_industrial"], require_masks=True), epochs=1, progress=False)


def test_an_undefined_metric_is_marked_and_counted_while_nan_scores_raise(tmp_path):
    import json

    import numpy as np

    from zsadlab.engine import class_metrics

    one_label = {"scores": np.array([0.1, 0.2]), "labels": np.array([0, 0]), "has_mask": np.array([False, False]),
                 "maps": None, "masks": np.zeros((2, 4, 4), np.uint8)}
    both = {**one_label, "labels": np.array([0, 1])}
    table = ResultTable(rows=[{"class": "a", **class_metrics(one_label)}, {"class": "b", **class_metrics(both)}])
    assert math.isnan(table.rows[0]["image_auroc"]) and table.rows[1]["image_auroc"] == 1.0
    assert table.mean["image_auroc"] == 1.0 and table.coverage["image_auroc"] == 1
    assert "image_auroc over 1/2" in str(table)
    saved = json.loads(table.to_json(tmp_path / "t.json").read_text())
    assert saved["rows"][0]["image_auroc"] is None and saved["covered"]["image_auroc"] == 1
    with pytest.raises(ValueError, match="NaN"):
        class_metrics({**both, "scores": np.array([math.nan, 0.2])})


def test_result_columns_are_chosen_by_name(smoke, roots):
    model = build_model("clip", smoke, device="cpu")
    table = evaluate(model, dataset_for(model, roots["synthetic_ultrasound"]), progress=False,
                     columns=["image_auroc", "pixel_f1_max"])
    assert table.columns == ("image_auroc", "pixel_f1_max") and set(table.rows[0]) == {"class", *table.columns}


def test_the_run_folder_records_the_run_and_refuses_another(smoke, roots, tmp_path):
    from zsadlab.engine import run_record
    from zsadlab.errors import RunError

    model = build_model("anomalyclip", smoke, device="cpu")
    data = dataset_for(model, roots["synthetic_industrial"], require_masks=True)
    train(model, data, epochs=1, out_dir=tmp_path, max_steps_per_epoch=1, progress=False)
    record = run_record(tmp_path)
    assert record["method"] == "anomalyclip" and record["seed"] == 111 and record["completed_epochs"] == 1
    assert record["config"]["features"] == [8] and record["dataset"]["split"] == "test"
    with pytest.raises(RunError, match="method"):
        coop = build_model("coop", smoke, device="cpu")
        train(coop, dataset_for(coop, roots["synthetic_industrial"], require_masks=True), epochs=1,
              out_dir=tmp_path, max_steps_per_epoch=1, progress=False)
    with pytest.raises(RunError, match="seed"):
        train(model, data, epochs=2, out_dir=tmp_path, seed=3, max_steps_per_epoch=1, progress=False)


def test_precision_follows_the_method_by_default_and_the_cpu_runs_fp32_saying_so_once(smoke, roots, tmp_path, capsys):
    import inspect

    from zsadlab.engine import building

    assert inspect.signature(train).parameters["amp"].default is None  # None: the method's own precision
    building._say_once.cache_clear()
    vand, anomalyclip = build_model("vand", smoke, device="cpu"), build_model("anomalyclip", smoke, device="cpu")
    assert building.precision_of(vand, "cpu") == building.precision_of(anomalyclip, "cpu", amp=True) == "fp32"
    building.precision_of(vand, "cpu")
    lines = [line for line in capsys.readouterr().out.splitlines() if "fp16 autocast on CUDA" in line]
    assert lines == ["zsadlab: vand would run fp16 autocast on CUDA; on cpu it runs fp32",
                     "zsadlab: anomalyclip would run fp16 autocast on CUDA; on cpu it runs fp32"]
    assert building.precision_of(anomalyclip, "cpu") == "fp32" and not capsys.readouterr().out
    train(anomalyclip, dataset_for(anomalyclip, roots["synthetic_industrial"], require_masks=True), epochs=1,
          out_dir=tmp_path, max_steps_per_epoch=1, progress=False)
    assert '"precision": "fp32"' in (tmp_path / "run.json").read_text()


def test_prompts_are_initialised_under_the_runs_seed_default_the_official_111(smoke):
    def prompts(**seed):
        return build_model("anomalyclip", smoke, device="cpu", **seed).prompt_learner.ctx_pos.detach()

    assert torch.equal(prompts(), prompts(seed=111))
    assert not torch.equal(prompts(seed=111), prompts(seed=0))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    prompts(seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # building never moves the caller's RNG


def test_datasets_follow_the_methods_official_resize(smoke, roots):
    inctrl = build_model("inctrl", smoke, device="cpu")
    assert dataset_for(inctrl, roots["synthetic_ultrasound"]).resize == "shorter_side_center_crop"
    assert dataset_for(inctrl, roots["synthetic_ultrasound"], split="train").resize == "shorter_side_center_crop"
    vand = build_model("vand", smoke, device="cpu")
    assert dataset_for(vand, roots["synthetic_ultrasound"]).resize == "squash"


def test_vand_trains_its_linear_layers_and_the_checkpoint_loads_back(smoke, roots, tmp_path):
    from zsadlab.engine import fit, load_checkpoint

    model = build_model("vand", smoke, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, roots["synthetic_industrial"], epochs=1, out_dir=tmp_path, max_steps_per_epoch=2,
                  progress=False)
    assert len(history["total"]) == 2 and all(math.isfinite(v) for v in history["total"])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("trainable_linearlayer.") for k in changed)
    other = load_checkpoint(build_model("vand_fewshot", smoke, device="cpu"), tmp_path / "epoch_1.pth")
    for key, value in other.trainable_linearlayer.state_dict().items():
        torch.testing.assert_close(value, model.trainable_linearlayer.state_dict()[key], rtol=0, atol=0)


def test_vand_on_mvtec_ad_trains_the_official_run_3_epochs_of_8_with_mosaics_at_0_2(smoke, marked_toy_set, tmp_path):
    from zsadlab.engine import fit, run_record

    model = build_model("vand", smoke, device="cpu", epochs=None)  # the smoke profile's 1 epoch left to the recipe
    run = tmp_path / "run"
    history = fit(model, marked_toy_set("mvtec"), out_dir=run, max_steps_per_epoch=1, progress=False)
    assert len(history["epoch_total"]) == 3 and (run / "epoch_3.pth").exists()
    record = run_record(run)
    assert (record["config"]["epochs"], record["batch_size"], record["config"]["aug_rate"]) == (3, 8, 0.2)


def test_the_recipe_fills_only_what_the_config_leaves_open_and_other_methods_keep_theirs(smoke, roots):
    from zsadlab.engine import configure_for

    vand = build_model("vand", smoke, device="cpu")  # smoke: 1 epoch
    data = dataset_for(vand, roots["synthetic_industrial"], require_masks=True)
    assert (configure_for(vand, data).epochs, vand.config.batch_size, vand.config.aug_rate) == (1, 8, 0.0)
    assert configure_for(vand, data) == vand.config  # a second time changes nothing
    anomalyclip = build_model("anomalyclip", smoke, device="cpu")
    before = anomalyclip.config
    assert configure_for(anomalyclip, data) is before


def test_class_scores_run_once_per_class_and_seed_over_the_whole_query_set(smoke, roots, tmp_path, monkeypatch):
    import dataclasses

    from zsadlab import methods, vand
    from zsadlab.engine import evaluate_fewshot
    from zsadlab.metrics import get_metric

    calls = []

    def spy(scores, maps):
        calls.append((np.asarray(scores).copy(), np.asarray(maps).copy()))
        return vand.normalise_fewshot_scores(scores, maps)

    monkeypatch.setitem(methods._REGISTRY, "vand_fewshot",
                        dataclasses.replace(methods.get_method("vand_fewshot"), class_scores=spy))
    model = build_model("vand_fewshot", smoke, device="cpu")
    test_set = dataset_for(model, roots["synthetic_ultrasound"])
    support = dataset_for(model, roots["synthetic_ultrasound"], split="train")
    table = evaluate_fewshot(model, test_set, support, shots=2, seeds=(0, 1), prompt_dir=tmp_path, batch_size=3,
                             progress=False)
    assert len(calls) == len(test_set.classes) * 2  # once per (class, seed), whatever the batch size
    queries = test_set.subset(test_set.classes[0])
    assert all(len(scores) == len(queries) for scores, _ in calls)
    auroc = get_metric("image_auroc").function
    expected = [auroc(vand.normalise_fewshot_scores(s, m), queries.labels) for s, m in calls]
    assert table.rows[0]["image_auroc"] == pytest.approx(float(np.mean(expected)), abs=1e-9)
    assert all(m.shape == (len(queries), *queries[0]["image"].shape[1:]) for _, m in calls)  # whole maps


def test_the_python_api_takes_a_folder_or_one_path_and_names_bad_counts(smoke, roots, tmp_path):
    from zsadlab.engine import predict_images
    from zsadlab.engine import test as run_test

    model = build_model("clip", smoke, device="cpu")
    by_path = evaluate(model, str(roots["synthetic_ultrasound"]), progress=False)
    assert by_path.rows == evaluate(model, dataset_for(model, roots["synthetic_ultrasound"]), progress=False).rows
    with pytest.raises(TypeError, match="takes a dataset"):
        evaluate(model, 3)
    folder = roots["synthetic_ultrasound"] / "thyroid" / "test" / "nodule"
    written = predict_images(model, str(folder), tmp_path / "out")
    assert len(written["overlays"]) == len(list(folder.glob("*.png")))
    inctrl = build_model("inctrl", smoke, device="cpu")
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        run_test(inctrl, roots["synthetic_industrial"], shots=0)
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        run_test(inctrl, roots["synthetic_industrial"], seeds=[])
