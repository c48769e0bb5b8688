"""Full-size dry run: the full profile's backbones from random weight files, loaded as real weights are.

Writes random weights for ViT-L-14-336 as an OpenAI TorchScript archive (fp16 weights, fp32
norms, the layout of OpenAI's ``ViT-L-14-336px.pt``) and for ViT-B-16-plus-240 as an open_clip
``torch.save`` state dict (the layout of open_clip's ``laion400m_e32`` file, named by model and
tag) into a weights folder, builds both through the full profile's backbones (``$ZSADLAB_WEIGHTS_DIR``, the path a
user's real files take), then runs one AnomalyCLIP prediction and one training step at 518 px,
loads a prompt learner in the official checkpoint layout, runs one InCTRL forward at 240 px, and checks
that the ONNX export of AnomalyCLIP at 518 px gives the torch outputs within 1e-4.

About a minute and 4.4 GB of memory: ``make test`` runs it (``make test-fullsize`` runs only it,
``ZSADLAB_FULLSIZE=1 python -m pytest -q -m fullsize tests/test_fullsize.py``).
"""
from __future__ import annotations

import os
import types

import open_clip
import pytest
import torch
from open_clip.model import convert_weights_to_fp16

from zsadlab.anomalyclip import AnomalyCLIP, load_official_checkpoint
from zsadlab.inctrl import InCTRL
from zsadlab.profiles import PROFILES

pytestmark = [
    pytest.mark.fullsize,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("ZSADLAB_FULLSIZE") != "1", reason="full-size dry run: set ZSADLAB_FULLSIZE=1"),
]

FULL = PROFILES["full"]


def write_openai_torchscript(path, name: str) -> None:
    """Random weights of ``name`` saved as OpenAI releases them: a TorchScript archive of the CLIP,
    fp16 matrices, with ``input_resolution``/``context_length``/``vocab_size`` tensors."""
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True).eval()
    convert_weights_to_fp16(model)
    sizes = {"input_resolution": model.visual.image_size[0], "context_length": 77, "vocab_size": 49408}
    for key, value in sizes.items():
        model.__dict__.pop(key, None)
        model.register_buffer(key, torch.tensor(value))
    model.forward = types.MethodType(lambda self, x: x * self.logit_scale, model)  # trace nothing heavy
    with pytest.warns(Warning):
        torch.jit.trace(model, torch.ones(1), check_trace=False).save(str(path))


def write_open_clip_state_dict(path, name: str) -> None:
    torch.manual_seed(0)
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), path)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    anomalyclip = FULL.backbone("anomalyclip")  # one tag only (openai): the plain ViT-L-14-336.pt
    write_openai_torchscript(folder / f"{anomalyclip.name}.pt", anomalyclip.name)
    inctrl = FULL.backbone("inctrl")  # one file per pretrained tag: ViT-B-16-plus-240-laion400m_e32.pt
    write_open_clip_state_dict(folder / f"{inctrl.name}-{inctrl.pretrained}.pt", inctrl.name)
    return folder


@pytest.fixture
def full_weights(weights_dir, monkeypatch):
    monkeypatch.delenv("ZSADLAB_CLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("ZSADLAB_WEIGHTS_DIR", str(weights_dir))
    return weights_dir


def official_prompt_learner(width: int = 768, n_ctx: int = 12, t_n_ctx: int = 4, depth: int = 9) -> dict:
    """A prompt learner in the layout of the official ``epoch_15.pth`` (AnomalyCLIP_PromptLearner,
    ViT-L-14-336: text width 768; the unused projections are hard-coded 896 wide)."""
    torch.manual_seed(1)
    state = {}
    for polarity in ("pos", "neg"):
        state[f"ctx_{polarity}"] = torch.randn(1, 1, n_ctx, width) * 0.02
        state[f"token_prefix_{polarity}"] = torch.randn(1, 1, 1, width)
        state[f"token_suffix_{polarity}"] = torch.randn(1, 1, 77 - 1 - n_ctx, width)
        state[f"tokenized_prompts_{polarity}"] = torch.zeros(1, 1, 77, dtype=torch.long)
    for i in range(depth - 1):
        state[f"compound_prompts_text.{i}"] = torch.randn(t_n_ctx, width) * 0.02
        state[f"compound_prompt_projections.{i}.weight"] = torch.randn(896, width)
        state[f"compound_prompt_projections.{i}.bias"] = torch.randn(896)
    return state


def test_anomalyclip_at_full_size_predicts_trains_and_loads_the_official_checkpoint_layout(full_weights, tmp_path):
    clip = FULL.backbone("anomalyclip").build("cpu")
    assert clip.visual.conv1.weight.shape == (1024, 3, 14, 14) and len(clip.visual.transformer.resblocks) == 24
    assert all(p.dtype == torch.float32 for p in clip.parameters())
    model = AnomalyCLIP(clip, FULL.config("anomalyclip")).eval()
    size = FULL.config("anomalyclip").image_size
    assert size == 518
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    scores, maps = model.predict(x, "object")
    assert scores.shape == (1,) and maps.shape == (1, size, size)
    assert scores.dtype == maps.dtype == torch.float32 and bool(torch.isfinite(maps).all())

    learner = list(model.prompt_learner.parameters())
    before = [p.detach().clone() for p in learner]
    optimizer = torch.optim.Adam([p for p in learner if p.requires_grad], lr=1e-3, betas=(0.5, 0.999))
    masks = (torch.rand(1, size, size) > 0.9).float()
    loss = model.losses(x, masks, torch.tensor([1]), "object")["total"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, learner))

    official = official_prompt_learner()
    torch.save({"prompt_learner": official}, tmp_path / "epoch_15.pth")
    load_official_checkpoint(model, tmp_path / "epoch_15.pth")
    loaded = model.prompt_learner.state_dict()
    assert sorted(loaded) == sorted(official)
    assert torch.equal(loaded["ctx_pos"], official["ctx_pos"])


def test_inctrl_at_full_size_runs_a_forward_pass(full_weights):
    clip = FULL.backbone("inctrl").build("cpu")
    assert clip.visual.conv1.weight.shape == (896, 3, 16, 16)
    config = FULL.config("inctrl")
    size = config.image_size
    assert size == 240 and config.layers == (7, 9, 11)
    model = InCTRL(clip, config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size), torch.randn(2, 3, size, size), "object")
    assert out.final_score.shape == (1,) and out.patch_map.shape == (1, (size // 16) ** 2)
    assert out.final_score.dtype == torch.float32 and bool(torch.isfinite(out.final_score).all())


def test_the_onnx_export_of_anomalyclip_at_full_size_matches_torch_within_1e_4(full_weights, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from zsadlab import engine
    from zsadlab.export import export_onnx

    model = engine.build_model("anomalyclip", FULL, device="cpu")
    path = export_onnx(model, tmp_path / "anomalyclip.onnx")
    size = FULL.anomalyclip_image_size
    torch.manual_seed(0)
    images = torch.randn(1, 3, size, size)
    scores, maps = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["scores", "maps"], {"images": images.numpy()})
    expected_scores, expected_maps = model.predict(images)
    assert maps.shape == (1, size, size)
    assert abs(scores - expected_scores.numpy()).max() <= 1e-4
    assert abs(maps - expected_maps.numpy()).max() <= 1e-4
