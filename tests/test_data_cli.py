"""Specification of ``zsadlab data ...`` (called through ``main(argv)``, no subprocess)."""
from __future__ import annotations

from zsadlab import cli
from zsadlab.data import AnomalyDataset, registry


def test_data_list_prints_every_registered_dataset(capsys):
    assert cli.main(["data", "list"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in registry.names())


def test_data_synth_writes_a_readable_dataset(tmp_path, capsys):
    assert cli.main(["data", "synth", "synthetic_ultrasound", "--out", str(tmp_path / "us"), "--seed", "3"]) == 0
    assert len(AnomalyDataset(tmp_path / "us", "test")) == 14


def test_data_prepare_converts_a_raw_folder(tmp_path, write_image, capsys):
    write_image(tmp_path / "raw/yes/Y1.jpg")
    write_image(tmp_path / "raw/no/N1.jpg")
    assert cli.main(["data", "prepare", "brainmri", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]) == 0
    assert AnomalyDataset(tmp_path / "o", "test").labels.tolist() == [0, 1]


def test_bad_input_prints_one_error_line_and_exits_2(tmp_path, capsys):
    assert cli.main(["data", "prepare", "headct", "--raw", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: raw folder") and "Traceback" not in err


def test_download_without_direct_url_explains_the_manual_steps(capsys):
    assert cli.main(["data", "download", "tn3k"]) == 2
    assert "TRFE-Net" in capsys.readouterr().err


def test_command_groups_come_from_a_registry_of_builders():
    assert "data" in cli.COMMANDS and callable(cli.COMMANDS["data"])
    assert cli.parser().parse_args(["data", "list"]).func is not None
