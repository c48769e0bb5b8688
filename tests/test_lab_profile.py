"""The lab profile: the full setups and real data within a budget of about one GPU-hour per notebook."""
import dataclasses
from pathlib import Path

import pytest

from zsadlab import costs, methods, viz
from zsadlab.cli import parser
from zsadlab.notebook import start
from zsadlab.profiles import PROFILES, Budget, Profile, get_profile
from zsadlab.series import EVALUATIONS, SERIES, notebook_minutes

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TOY = "toy_lab"  # a budgeted profile on the smoke setups: the lab's code paths on the CPU


def _session(tmp_path, profile="lab", **params):
    return start(profile=profile, device="cpu", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                 cache=str(tmp_path / "cache"), **params)


@pytest.fixture
def toy_lab(monkeypatch):
    """Profile ``toy_lab``: the smoke setups and data with a one-step schedule budget."""
    profile = Profile(TOY, "synthetic_industrial", "synthetic_ultrasound", meaningful=False,
                      budget=Budget(steps_per_epoch=1))
    monkeypatch.setitem(PROFILES, TOY, profile)
    for name in methods.method_names():
        setups = methods.get_method(name).setups
        monkeypatch.setitem(setups, TOY, setups["smoke"])
    return profile


def test_auto_never_picks_lab_even_when_every_weight_is_on_disk(monkeypatch):
    monkeypatch.setattr("zsadlab.backbone.weights_available", lambda name, pretrained: True)
    assert get_profile("auto").name == "full"
    assert get_profile("lab").name == "lab"


def test_lab_runs_every_registered_method_on_its_full_setup():
    lab, full = PROFILES["lab"], PROFILES["full"]
    assert set(lab.setups) == set(full.setups) == set(methods.method_names())
    for name in methods.method_names():
        assert lab.backbone(name) is full.backbone(name)
        assert lab.config(name) == full.config(name)
        assert lab.setup(name).eval_batch_size == full.setup(name).eval_batch_size


def test_lab_is_meaningful_on_the_papers_data_and_only_lab_has_a_budget():
    lab = PROFILES["lab"]
    assert lab.meaningful and (lab.train_dataset, lab.test_dataset) == ("mvtec", "visa")
    assert lab.budget is not None and all(v is not None for v in dataclasses.asdict(lab.budget).values())
    assert PROFILES["full"].budget is None and PROFILES["smoke"].budget is None


def test_start_in_lab_applies_the_profiles_budget_where_the_notebook_leaves_its_own_none(tmp_path, capsys):
    S = _session(tmp_path)
    budget = PROFILES["lab"].budget
    assert (S.classes, S.classes_per_dataset) == (None, budget.classes_per_dataset)
    assert (S.max_images_per_class, S.steps_per_epoch) == (budget.max_images_per_class, budget.steps_per_epoch)
    assert S.budget == budget
    assert S.budget_note in capsys.readouterr().out and f"<= {budget.steps_per_epoch} training steps" in S.budget_note


def test_explicit_notebook_budget_parameters_win_over_the_lab_defaults(tmp_path):
    S = _session(tmp_path, classes=["bottle"], max_images_per_class=5, steps_per_epoch=2)
    assert (S.classes, S.classes_per_dataset, S.max_images_per_class, S.steps_per_epoch) == (["bottle"], None, 5, 2)
    assert S.budget is None and S.without_budget() is None
    partly = _session(tmp_path, steps_per_epoch=2)
    assert partly.steps_per_epoch == 2 and partly.budget.steps_per_epoch is None
    assert partly.max_images_per_class == PROFILES["lab"].budget.max_images_per_class


def test_full_and_smoke_sessions_have_no_budget_and_unchanged_titles(tmp_path, capsys):
    S = _session(tmp_path, profile="smoke")
    assert S.budget is None and S.budget_note == "" and S.max_images_per_class is None
    viz.print_table({"a": {"m": 1.0}}, title="A table")
    assert "A table\n" in capsys.readouterr().out


def test_every_result_table_of_a_lab_session_says_its_budget(tmp_path, capsys):
    S = _session(tmp_path)
    capsys.readouterr()
    viz.print_table({"a": {"m": 1.0}}, title="A table")
    assert f"A table\n[{S.budget_note}]" in capsys.readouterr().out
    fig = viz.plot_comparison({"run": {"m": 50.0}}, title="A figure")
    assert S.budget_note in fig.axes[0].get_title()
    _session(tmp_path, profile="smoke")  # the next session without a budget clears the note
    viz.print_table({"a": {"m": 1.0}}, title="B")
    assert "[budget" not in capsys.readouterr().out


def test_classes_per_dataset_keeps_the_first_classes_of_every_dataset(tmp_path):
    S = dataclasses.replace(_session(tmp_path, profile="smoke"), classes_per_dataset=2, max_images_per_class=4)
    model = S.build("clip")
    data = S.dataset(S.train_name, model)
    everything = dataclasses.replace(S, classes_per_dataset=None, max_images_per_class=None).dataset(S.train_name, model)
    assert data.classes == everything.classes[:2] and len(data) <= 2 * 4


def test_a_budgeted_session_shortens_a_training_only_where_no_full_schedule_run_is_cached(tmp_path, toy_lab, capsys):
    S = _session(tmp_path, profile=TOY)
    assert S.steps_per_epoch == 1 and S.without_budget().steps_per_epoch is None
    _, _, short = S.training("anomalyclip")
    _, _, full = S.without_budget().training("anomalyclip")
    assert short.max_steps_per_epoch == 1 and full.max_steps_per_epoch is None and short.key != full.key
    _, run = S.trained("anomalyclip")
    assert run.key == short.key and run.action == "trained" and "shortened schedule" in capsys.readouterr().out


def test_a_budgeted_session_loads_the_full_schedule_run_when_the_cache_has_it(tmp_path, toy_lab, capsys):
    S = _session(tmp_path, profile=TOY)
    _, full = S.without_budget().trained("anomalyclip")  # e.g. installed by `zsadlab course pack pull`
    capsys.readouterr()
    assert S.training("anomalyclip")[2].key == full.key  # the plan sees the same choice
    _, run = S.trained("anomalyclip")
    assert (run.key, run.action) == (full.key, "reused") and "shortened" not in capsys.readouterr().out


def test_every_notebook_costs_at_most_about_an_hour_in_lab_by_the_cost_model(tmp_path):
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    minutes = notebook_minutes(notebooks, {"profile": "lab", "data_root": str(tmp_path / "nothing")},
                               cache=tmp_path / "cache")
    assert set(minutes) == set(SERIES) == set(EVALUATIONS)
    for stem, m in minutes.items():
        assert m["total"] is not None and m["total"] <= 60, (stem, m)
    assert minutes["02_dpam"]["training"] > 0 and minutes["06_zero_shot_evaluation"]["evaluation"] > 0


def test_lab_prices_its_evaluations_with_the_full_backbones_seconds():
    assert costs.cost("lab", "anomalyclip") == costs.cost("full", "anomalyclip")
    assert costs.prediction_minutes("lab", "winclip", 300) == pytest.approx(300 * costs.cost("full", "winclip").predict_s / 60)


def test_the_cli_accepts_lab_by_name():
    args = parser().parse_args(["train", "--profile", "lab"])
    assert args.profile == "lab"


def test_a_lab_subset_is_the_same_draw_whatever_the_training_seed(tmp_path, toy_lab, monkeypatch):
    monkeypatch.setitem(PROFILES, TOY, dataclasses.replace(toy_lab, budget=Budget(max_images_per_class=3)))
    S = _session(tmp_path, profile=TOY)
    model = S.build("clip")
    draws = [dataclasses.replace(S, seed=seed).dataset(S.train_name, model) for seed in (None, 111, 112)]
    assert len({tuple(str(s.path) for s in d.samples) for d in draws}) == 1
