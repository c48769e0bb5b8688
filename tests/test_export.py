"""ONNX export: the graph run by onnxruntime gives the torch model's scores and maps (batch 1 and 3, two image
contents, dynamic batch), its smoothing is scipy's Gaussian, thresholds travel as metadata, and methods it
cannot export are refused in one line."""
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from zsadlab import cli, engine
from zsadlab.calibration import calibrate
from zsadlab.errors import InputError
from zsadlab.export import export_onnx, is_export
from zsadlab.profiles import get_profile

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SMOKE = get_profile("smoke", quiet=True)
TOLERANCE = 1e-4


def image_contents(batch: int, size: int) -> dict[str, torch.Tensor]:
    """Two kinds of input ``[B, 3, S, S]``: noise, and smooth ramps with a bright square (a 'defect')."""
    noise = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    ramp = torch.linspace(-1.5, 1.5, size)
    structured = (ramp[None, None, :, None] * ramp[None, None, None, :]).expand(batch, 3, size, size).clone()
    structured[..., size // 3: size // 2, size // 3: size // 2] = 2.0
    return {"noise": noise, "structured": structured}


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def metadata(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.fixture(scope="module")
def anomalyclip(tmp_path_factory):
    model = engine.build_model("anomalyclip", SMOKE, device="cpu")
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / "anomalyclip.onnx")


@pytest.mark.parametrize("batch", [1, 3])
def test_anomalyclips_graph_gives_the_torch_scores_and_maps_within_1e_4(anomalyclip, batch):
    model, path = anomalyclip
    graph = session(path)
    for name, images in image_contents(batch, model.config.image_size).items():
        scores, maps = graph.run(["scores", "maps"], {"images": images.numpy()})
        expected_scores, expected_maps = model.predict(images)
        assert scores.shape == (batch,) and maps.shape == (batch, 112, 112), name
        np.testing.assert_allclose(scores, expected_scores.numpy(), atol=TOLERANCE, rtol=0, err_msg=name)
        np.testing.assert_allclose(maps, expected_maps.numpy(), atol=TOLERANCE, rtol=0, err_msg=name)


def test_the_graphs_smoothing_is_scipys_gaussian_filter_with_its_reflect_padding(anomalyclip):
    model, path = anomalyclip
    images = image_contents(2, model.config.image_size)["structured"]
    _, maps = session(path).run(["scores", "maps"], {"images": images.numpy()})
    raw = model.predict(images, smooth=False)[1].double().numpy()  # [B, S, S]
    expected = np.stack([gaussian_filter(m, sigma=model.config.sigma, mode="reflect") for m in raw])
    np.testing.assert_allclose(maps, expected, atol=TOLERANCE, rtol=0)


def test_vand_zero_shot_takes_a_class_index_into_the_class_names_given_at_export(tmp_path):
    model = engine.build_model("vand", SMOKE, device="cpu")
    names = ["bottle", "metal_plate"]
    path = export_onnx(model, tmp_path / "vand.onnx", class_names=names)
    assert json.loads(metadata(path)["zsadlab.class_names"]) == names
    graph = session(path)
    for batch in (1, 3):
        index = torch.tensor([(i + 1) % 2 for i in range(batch)])
        for name, images in image_contents(batch, model.config.image_size).items():
            scores, maps = graph.run(["scores", "maps"], {"images": images.numpy(), "class_index": index.numpy()})
            expected_scores, expected_maps = model.predict(images, [names[i] for i in index])
            np.testing.assert_allclose(scores, expected_scores.numpy(), atol=TOLERANCE, rtol=0, err_msg=name)
            np.testing.assert_allclose(maps, expected_maps.numpy(), atol=TOLERANCE, rtol=0, err_msg=name)


def test_a_calibration_writes_its_thresholds_into_the_metadata(tmp_path, write_image):
    model = engine.build_model("clip", SMOKE, device="cpu")
    for i in range(3):
        write_image(tmp_path / "normals" / f"n{i}.png", size=(40, 40))
    record = calibrate(model, tmp_path / "normals", alpha=0.25)
    path = export_onnx(model, tmp_path / "clip.onnx", class_names=["object"], calibration=record)
    meta = metadata(path)
    assert float(meta["zsadlab.image_threshold"]) == record.image_threshold
    assert float(meta["zsadlab.pixel_threshold"]) == record.pixel_threshold
    assert float(meta["zsadlab.alpha"]) == 0.25 and meta["zsadlab.method"] == "clip" and is_export(path)
    other = engine.build_model("clip", SMOKE, device="cpu", sigma=1.0)
    with pytest.raises(InputError, match="another clip config"):
        export_onnx(other, tmp_path / "other.onnx", class_names=["object"], calibration=record)


def test_object_agnostic_prompts_take_no_class_names_and_class_aware_ones_need_them(anomalyclip, tmp_path):
    model, _ = anomalyclip
    with pytest.raises(InputError, match="object-agnostic"):
        export_onnx(model, tmp_path / "x.onnx", class_names=["bottle"])
    with pytest.raises(InputError, match="--class-names"):
        export_onnx(engine.build_model("vand", SMOKE, device="cpu"), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("method,reason", [("inctrl", "few-shot"), ("vand_fewshot", "few-shot"),
                                           ("winclip", "no image path with precomputable text")])
def test_a_method_export_cannot_handle_is_refused_in_one_line(method, reason, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    assert cli.main(["export", "--method", method, "--profile", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot export {method}") and reason in err and "\n" not in err
    assert not out.exists()


def test_the_export_command_writes_a_graph_and_replaces_only_its_own_files(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    args = ["export", "--method", "anomalyclip", "--profile", "smoke", "--format", "onnx", "--out", str(out)]
    assert cli.main(args) == 0 and is_export(out)
    assert cli.main(args) == 0  # its own export is replaced
    theirs = tmp_path / "theirs.onnx"
    theirs.write_text("a file the user owns")
    assert cli.main(args[:-1] + [str(theirs)]) == 2
    assert "not an ONNX export written by zsadlab" in capsys.readouterr().err
    assert theirs.read_text() == "a file the user owns"
