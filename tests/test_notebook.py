"""The notebooks' session: one call sets up profile, device, paths and budget; trainings go through the cache."""
from zsadlab import engine
from zsadlab.notebook import COLUMNS, start


def test_start_resolves_paths_against_the_repository_and_uses_the_cpu_in_smoke(tmp_path):
    session = start(profile="smoke", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                    cache=str(tmp_path / "cache"))
    assert session.device.type == "cpu"
    assert session.data_root == tmp_path / "data" and session.out == tmp_path / "out"
    assert session.train_name == "synthetic_industrial" and session.test_name == "synthetic_ultrasound"


def test_the_default_training_of_the_series_is_trained_once_and_then_reused(tmp_path):
    session = start(profile="smoke", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                    cache=str(tmp_path / "cache"), steps_per_epoch=2)
    _, first = session.trained("anomalyclip")
    _, again = session.trained("anomalyclip")
    assert (first.action, again.action) == ("trained", "reused")


def test_official_falls_back_to_the_cache_in_smoke_and_summary_keeps_the_table_columns(tmp_path):
    session = start(profile="smoke", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                    cache=str(tmp_path / "cache"), steps_per_epoch=1)
    model, action = session.official()
    assert action == "trained"
    table = engine.evaluate(model, session.dataset(session.test_name, model), progress=False)
    assert list(session.summary(table)) == [c for c in COLUMNS if c in table.columns]


def test_check_compares_numbers_within_a_tolerance_and_never_raises(capsys):
    from zsadlab.notebook import check

    assert check("q1", 0.5, 0.52, tolerance=0.05)
    assert not check("q2", None, 3)
    assert not check("q3", "bottle", "cable")
    assert "not answered yet" in capsys.readouterr().out
