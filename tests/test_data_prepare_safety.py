"""Specification: preparing a dataset never deletes anything the user owns (issue #14, items 1 and 2)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from zsadlab import cli
from zsadlab.data import DatasetError, ensure_dataset, prepare
from zsadlab.data.prepare import MARKER


def _raw_brainmri(raw: Path, write_image) -> dict[Path, bytes]:
    """A BrainMRI raw folder (yes/ and no/); returns every file's bytes."""
    for name in ("no/N1.jpg", "no/N2.jpg", "no/N3.jpg", "no/N4.jpg", "yes/Y1.jpg"):
        write_image(raw / name)
    (raw / "notes.txt").write_text("the user's own file")
    return {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}


def _unchanged(files: dict[Path, bytes]) -> bool:
    return all(p.is_file() and p.read_bytes() == data for p, data in files.items())


@pytest.mark.parametrize("out", ["raw", ".", "raw/.."])
def test_force_with_out_equal_to_or_above_raw_refuses_and_keeps_raw_files_byte_for_byte(
    out, tmp_path, write_image, capsys
):
    files = _raw_brainmri(tmp_path / "raw", write_image)
    argv = ["data", "prepare", "brainmri", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / out), "--force"]
    assert cli.main(argv) == 2
    assert "contains the raw folder" in capsys.readouterr().err
    assert _unchanged(files)


def test_force_does_not_replace_a_folder_zsadlab_did_not_prepare(tmp_path, write_image, capsys):
    _raw_brainmri(tmp_path / "raw", write_image)
    precious = tmp_path / "mine" / "thesis.txt"
    precious.parent.mkdir()
    precious.write_text("years of work")
    argv = ["data", "prepare", "brainmri", "--raw", str(tmp_path / "raw"), "--out", str(precious.parent), "--force"]
    assert cli.main(argv) == 2
    assert MARKER in capsys.readouterr().err
    assert precious.read_text() == "years of work"


def test_force_replaces_a_folder_that_prepare_wrote(tmp_path, write_image):
    _raw_brainmri(tmp_path / "raw", write_image)
    out = prepare("brainmri", raw=tmp_path / "raw", out=tmp_path / "out")
    assert (out / MARKER).is_file()
    prepare("brainmri", raw=tmp_path / "raw", out=out, overwrite=True)
    assert (out / MARKER).is_file() and (out / "meta.json").is_file()


def test_force_may_fill_an_empty_folder(tmp_path, write_image):
    _raw_brainmri(tmp_path / "raw", write_image)
    (tmp_path / "empty").mkdir()
    assert (prepare("brainmri", raw=tmp_path / "raw", out=tmp_path / "empty", overwrite=True) / MARKER).is_file()


def test_ensure_dataset_refuses_to_delete_a_foreign_folder_at_the_synthetic_path(tmp_path):
    foreign = tmp_path / "synthetic_industrial"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not a dataset")
    with pytest.raises(DatasetError, match="synthetic_industrial exists but is not a prepared"):
        ensure_dataset("synthetic_industrial", tmp_path)
    assert (foreign / "holiday.jpg").read_bytes() == b"not a dataset"


def test_ensure_dataset_regenerates_a_marked_but_incomplete_synthetic_folder(tmp_path):
    partial = tmp_path / "synthetic_ultrasound"
    partial.mkdir()
    (partial / MARKER).write_text("prepared by zsadlab: synthetic_ultrasound\n")
    root = ensure_dataset("synthetic_ultrasound", tmp_path)
    assert (root / "meta.json").is_file()


def _raw_mvtec_class(folder: Path, write_image, write_mask) -> None:
    """One MVTec class folder (``train/good``, ``test/good``, ``test/crack`` with masks)."""
    for split in ("train", "test"):
        write_image(folder / split / "good" / "000.png")
    write_image(folder / "test" / "crack" / "000.png")
    write_mask(folder / "ground_truth" / "crack" / "000_mask.png")


@pytest.mark.parametrize("raw,inside", [(".", "."), ("..", "test")])
def test_prepare_from_inside_a_class_folder_names_the_class_and_writes_only_into_out(
    raw, inside, tmp_path, write_image, write_mask, monkeypatch
):
    plate = tmp_path / "raw" / "mv1" / "plate"
    _raw_mvtec_class(plate, write_image, write_mask)
    monkeypatch.chdir(plate / inside)  # --raw names the class folder plate as "." or ".."
    before = sorted(p for p in tmp_path.rglob("*"))
    out = tmp_path / "data" / "dot"
    assert cli.main(["data", "prepare", "mvtec", "--raw", raw, "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta["test"]) == ["plate"] and meta["test"]["plate"] and list(meta["train"]) == ["plate"]
    outside = [p for p in tmp_path.rglob("*") if p not in before and out not in (p, *p.parents)]
    assert outside == [tmp_path / "data"]  # only out's parent was created


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs"])
def test_a_name_that_is_not_one_path_component_is_refused_naming_the_source(name, tmp_path, write_image):
    from zsadlab.data.writer import LayoutWriter

    writer = LayoutWriter(tmp_path / "out")
    source = write_image(tmp_path / "raw.png")
    with pytest.raises(DatasetError, match="raw.png"):
        writer.normal(source, name, "x.png")
    with pytest.raises(DatasetError, match="raw.png"):
        writer.anomalous(source, "plate", name, "x.png")
    assert not (tmp_path / "out").exists()


def test_prepare_into_a_folder_it_did_not_write_suggests_what_works_not_force(tmp_path, write_image, capsys):
    _raw_brainmri(tmp_path / "raw", write_image)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    argv = ["data", "prepare", "brainmri", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "mine")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--force" not in err.replace("not even with --force", "") and "Choose another --out" in err
    prepare("brainmri", raw=tmp_path / "raw", out=tmp_path / "ours")
    assert cli.main([*argv[:-1], str(tmp_path / "ours")]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert cli.main([*argv[:-1], str(tmp_path / "ours"), "--force"]) == 0  # the suggestion works


def test_the_partial_folder_of_a_killed_prepare_is_removed_by_the_next_one(tmp_path, write_image):
    import subprocess
    import sys

    _raw_brainmri(tmp_path / "raw", write_image)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".out.{dead.pid}-abc123.partial"
    (orphan / "brain").mkdir(parents=True)
    legacy = tmp_path / ".out.notes.partial"  # not our naming: never touched
    legacy.mkdir()
    prepare("brainmri", raw=tmp_path / "raw", out=tmp_path / "out")
    assert not orphan.exists() and legacy.is_dir()
    orphan.mkdir()
    prepare("brainmri", raw=tmp_path / "raw", out=tmp_path / "out", overwrite=True)  # also with --force
    assert not orphan.exists() and sorted(p.name for p in tmp_path.iterdir()) == [".out.notes.partial", "out", "raw"]
