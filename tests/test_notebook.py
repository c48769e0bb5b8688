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
    out = capsys.readouterr().out
    assert "not answered yet" in out and "cable" not in out  # a wrong answer never shows the expected one


def test_a_check_ending_a_cell_displays_nothing_but_its_printed_line():
    from zsadlab.notebook import check

    verdict = check("q", 1, 1)
    assert verdict and hasattr(verdict, "_ipython_display_") and verdict._ipython_display_() is None


def test_official_loads_the_pulled_vand_checkpoint_of_the_training_set_when_the_profile_is_meaningful(
        tmp_path, monkeypatch):
    import dataclasses

    import torch

    from zsadlab import pretrained
    from zsadlab.vand import save_official_checkpoint

    session = start(profile="smoke", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                    cache=str(tmp_path / "cache"))
    source = session.build("vand")
    with torch.no_grad():
        for p in source.trainable_linearlayer.parameters():
            p.add_(1.0)  # weights no fresh build has
    file = save_official_checkpoint(source, tmp_path / "mvtec_pretrained.pth")
    monkeypatch.setenv("ZSADLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(pretrained.PRETRAINED, "vand-mvtec", dataclasses.replace(
        pretrained.PRETRAINED["vand-mvtec"], git_sha1=pretrained.git_blob_sha1(file)))
    pretrained.pull("vand-mvtec", from_file=file)
    session.profile = dataclasses.replace(session.profile, meaningful=True)  # as the full profile, tiny backbone
    model, action = session.official(method="vand", train_name="mvtec")
    assert action == "pulled"
    assert all(torch.equal(a, b) for a, b in zip(model.trainable_linearlayer.state_dict().values(),
                                                 source.trainable_linearlayer.state_dict().values()))


def _smoke(tmp_path, **budget):
    return start(profile="smoke", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"),
                 cache=str(tmp_path / "cache"), **budget)


def test_a_smoke_session_says_so_and_has_no_reference_run_yet(tmp_path):
    session = _smoke(tmp_path)
    assert session.smoke is True
    assert session.reference_run("06_zero_shot_pixel_auroc") is None


def test_zero_shot_targets_skip_the_training_set_and_name_what_is_not_prepared(tmp_path, capsys):
    session = _smoke(tmp_path)
    assert session.zero_shot_targets("synthetic_industrial") == ["synthetic_ultrasound"]
    assert session.zero_shot_targets("synthetic_ultrasound", ["synthetic_ultrasound", "mvtec"]) == []
    assert "skipping mvtec" in capsys.readouterr().out


def test_support_is_the_train_split_the_few_shot_evaluation_draws_from(tmp_path):
    session = _smoke(tmp_path, max_images_per_class=6)
    model = session.build("inctrl")
    support = session.support("synthetic_industrial", model)
    assert support.split == "train" and set(support.labels.tolist()) == {0}
    assert len(support) == 6 * len(support.classes)  # within the session's budget
