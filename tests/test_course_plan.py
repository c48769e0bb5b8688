"""The course plan: every distinct training the series requests, keyed as the notebooks key it, priced."""
import json
from pathlib import Path

import pytest

from zsadlab import costs
from zsadlab.course import main as course_main
from zsadlab.data import registry
from zsadlab.series import SERIES, notebook_parameters, plan, session_for

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LOSSES = NOTEBOOKS / "04_global_local_optimization.ipynb"


def _smoke(tmp_path, **extra):
    return {"profile": "smoke", "data_root": str(tmp_path / "data"), "steps_per_epoch": 1, **extra}


def test_every_notebook_of_the_series_has_a_declaration():
    assert sorted(SERIES) == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def test_parameters_come_from_the_parameters_cell_and_overrides_win():
    params = notebook_parameters(NOTEBOOKS / "02_dpam.ipynb", {"n_seeds": 1})
    assert params["seed"] == 111 and params["n_seeds"] == 1 and params["profile"] == "auto"


def test_a_planned_key_is_the_key_the_notebook_trains_under(tmp_path):
    runs = plan([LOSSES], _smoke(tmp_path), cache=tmp_path / "cache")
    assert [r.changes for r in runs] == [{"loss": "global"}, {"loss": "local"}, {"loss": "both"}]
    S = session_for(_smoke(tmp_path), cache=tmp_path / "cache")
    _, run = S.trained("anomalyclip", S.train_name, loss="local")  # what the notebook's cell does
    assert run.key == runs[1].key and run.action == "trained"
    assert [r.done for r in plan([LOSSES], _smoke(tmp_path), cache=tmp_path / "cache")] == [False, True, False]


def test_a_changed_parameter_is_another_training_and_shared_runs_are_listed_once(tmp_path):
    base = plan([LOSSES, NOTEBOOKS / "05_training_on_gpu.ipynb"], _smoke(tmp_path), cache=tmp_path / "c")
    assert len(base) == 3  # 05's default run is 04's "both": one training, requested by both notebooks
    assert any("05_training_on_gpu" in who for who in base[2].requested_by)
    other = plan([LOSSES], _smoke(tmp_path, seed=5), cache=tmp_path / "c")
    assert not {r.key for r in other} & {r.key for r in base}


def test_without_the_data_the_plan_still_prices_every_run_by_the_registry_and_says_what_the_key_needs(tmp_path):
    runs = plan([LOSSES], {"profile": "full", "data_root": str(tmp_path / "nothing")}, cache=tmp_path / "c")
    assert len(runs) == 3 and all(r.key is None and "mvtec" in r.needs for r in runs)
    images = registry.split_images("mvtec", "test")
    assert runs[0].images_x_epochs == images * 15
    assert runs[0].minutes == pytest.approx(round(costs.training_minutes("full", "anomalyclip", images * 15), 1))


def test_plan_json_lists_runs_with_their_keys(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert course_main(["plan", str(LOSSES), "-p", "profile", "smoke", "-p", "data_root", str(tmp_path / "data"),
                        "-p", "steps_per_epoch", "1", "--cache", str(tmp_path / "cache"), "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 3 and all(len(r["key"]) == 16 and r["method"] == "anomalyclip" for r in runs)
    assert {"seed", "epochs", "batch_size", "steps_per_epoch", "images_x_epochs", "minutes", "config"} <= set(runs[0])
    assert "3 trainings" in capsys.readouterr().out


def test_the_cost_model_has_a_row_for_every_method_that_trains_in_every_profile():
    from zsadlab.methods import get_method, method_names
    from zsadlab.profiles import PROFILES

    for profile in PROFILES:
        for method in method_names():
            if get_method(method).recipe is not None and method != "vand_fewshot":  # trained as "vand"
                assert costs.cost(profile, method).source
