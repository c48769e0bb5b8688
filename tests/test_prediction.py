"""``predict_images``: outputs that can be trusted - one row per input, distinct overlays, csv-safe names,
unreadable images reported, scores.csv replaced atomically, the method's own preprocessing."""
import csv
from pathlib import Path

import pytest
import torch

from zsadlab import engine
from zsadlab.data import image_tensor
from zsadlab.engine.building import input_normalisation
from zsadlab.engine.prediction import model_input, overlay_names
from zsadlab.errors import InputError
from zsadlab.profiles import get_profile


@pytest.fixture(scope="module")
def clip_model():
    return engine.build_model("clip", get_profile("smoke", quiet=True), device="cpu")


def rows_of(out):
    with (out / "scores.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_inputs_with_the_same_stem_get_distinct_overlays_and_one_row_each(clip_model, tmp_path, write_image):
    inputs = [write_image(tmp_path / "a" / "x.png", size=(40, 30)), write_image(tmp_path / "b" / "x.png"),
              write_image(tmp_path / "a" / "x.jpg")]
    out = tmp_path / "out"
    written = engine.predict_images(clip_model, [tmp_path / "a", tmp_path / "b"], out)
    rows = rows_of(out)
    assert sorted(r["path"] for r in rows) == sorted(map(str, inputs))
    assert len({r["overlay"] for r in rows}) == 3 and len(written["overlays"]) == 3
    assert all((out / r["overlay"]).is_file() and r["status"] == "ok" and 0 <= float(r["score"]) <= 1 for r in rows)
    assert sorted(p.name for p in out.glob("*_overlay.png")) == sorted(r["overlay"] for r in rows)


def test_overlay_names_are_deterministic_and_distinct_even_for_equal_parent_folders(tmp_path):
    paths = [tmp_path / "a" / "c" / "x.png", tmp_path / "b" / "c" / "x.png", tmp_path / "y.png"]
    names = overlay_names(paths)
    assert names == overlay_names(paths) and len(set(names)) == 3
    assert names[2] == "y_overlay.png"  # a unique stem keeps its plain name


def test_file_names_with_commas_quotes_and_newlines_round_trip_through_csv(clip_model, tmp_path, write_image):
    names = ['comma,name.png', 'quote"name.png', 'new\nline.png']
    inputs = [write_image(tmp_path / "in" / name) for name in names]
    out = tmp_path / "out"
    engine.predict_images(clip_model, inputs, out)
    rows = rows_of(out)
    assert [r["path"] for r in rows] == list(map(str, inputs))
    assert all((out / r["overlay"]).is_file() for r in rows)


def test_an_unreadable_image_is_reported_and_the_others_are_scored(clip_model, tmp_path, write_image):
    good = [write_image(tmp_path / "in" / f"good{i}.png") for i in range(2)]
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    written = engine.predict_images(clip_model, [tmp_path / "in"], out)
    rows = {r["path"]: r for r in rows_of(out)}
    assert len(rows) == 3 and written["skipped"] == [str(bad)]
    assert rows[str(bad)]["score"] == "" and rows[str(bad)]["overlay"] == ""
    assert rows[str(bad)]["status"].startswith("skipped: ") and "broken.png" in rows[str(bad)]["status"]
    assert all(rows[str(p)]["status"] == "ok" and rows[str(p)]["score"] != "" for p in good)
    assert len(list(out.glob("*_overlay.png"))) == 2


def test_a_stale_scores_csv_from_an_earlier_run_is_replaced(clip_model, tmp_path, write_image):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("path,score,overlay,status\nold.png,0.5,,ok\nolder.png,0.1,,ok\n")
    image = write_image(tmp_path / "in" / "new.png")
    engine.predict_images(clip_model, [image], out)
    assert [r["path"] for r in rows_of(out)] == [str(image)]
    assert not list(out.glob(".*.tmp"))  # no temporary left behind


def test_own_images_go_through_the_methods_official_transform(tmp_path, write_image):
    smoke = get_profile("smoke", quiet=True)
    image = write_image(tmp_path / "wide.png", size=(300, 200))  # not square: the two transforms differ
    inctrl = engine.build_model("inctrl", smoke, device="cpu")
    norm = input_normalisation(inctrl)
    size = inctrl.config.image_size
    expected = image_tensor(image, size, "shorter_side_center_crop", norm["mean"], norm["std"])
    torch.testing.assert_close(model_input(inctrl, image), expected, rtol=0, atol=0)
    squashed = image_tensor(image, size, "squash", norm["mean"], norm["std"])
    assert not torch.allclose(expected, squashed)


def test_few_shot_prediction_scores_each_image_alone(tmp_path, write_image):
    """VAND's class-level score normalisation belongs to evaluation, never to predict_images."""
    smoke = get_profile("smoke", quiet=True)
    model = engine.build_model("vand_fewshot", smoke, device="cpu")
    refs = [write_image(tmp_path / "refs" / f"r{i}.png") for i in range(2)]
    images = [write_image(tmp_path / "in" / f"q{i}.png") for i in range(3)]
    alone = [float(rows_of_run(model, [image], refs, tmp_path / f"alone{i}")[0]["score"])
             for i, image in enumerate(images)]
    together = [float(r["score"]) for r in rows_of_run(model, images, refs, tmp_path / "together")]
    assert together == pytest.approx(alone, abs=1e-5)


def rows_of_run(model, images, refs, out):
    engine.predict_images(model, images, out, prompts=[refs[0].parent])
    return rows_of(out)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_an_out_folder_holding_the_inputs_is_refused_and_the_users_files_are_unchanged(clip_model, tmp_path,
                                                                                       write_image):
    inout = tmp_path / "inout"
    write_image(inout / "a.png")
    write_image(inout / "a_overlay.png", value=7)
    (inout / "scores.csv").write_text("mine\n")
    before = _snapshot(inout)
    with pytest.raises(InputError, match="holds the input image"):
        engine.predict_images(clip_model, [inout], inout)
    assert _snapshot(inout) == before


def test_a_file_predict_did_not_write_is_never_replaced(clip_model, tmp_path, write_image):
    image = write_image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    write_image(out / "a_overlay.png", value=7)
    before = _snapshot(out)
    with pytest.raises(InputError, match="a_overlay.png"):
        engine.predict_images(clip_model, [image], out)
    assert _snapshot(out) == before
    (out / "a_overlay.png").unlink()
    (out / "scores.csv").write_text("id,label\n1,0\n")  # the user's own scores.csv
    before = _snapshot(out)
    with pytest.raises(InputError, match="scores.csv"):
        engine.predict_images(clip_model, [image], out)
    assert _snapshot(out) == before


def test_a_second_run_replaces_its_own_outputs_and_never_scores_them(clip_model, tmp_path, write_image):
    image = write_image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    engine.predict_images(clip_model, [image], out)
    engine.predict_images(clip_model, [image], out)  # its own overlay and scores.csv may be replaced
    assert [r["path"] for r in rows_of(out)] == [str(image)]
    write_image(out / "b.png")  # the output folder given as input: its overlays are not images to score
    engine.predict_images(clip_model, [out], tmp_path / "again")
    assert [Path(r["path"]).name for r in rows_of(tmp_path / "again")] == ["b.png"]
