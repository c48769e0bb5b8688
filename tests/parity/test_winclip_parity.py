"""WinCLIP / WinCLIP+ reproduce anomalib's numbers (tests/fixtures/winclip/FIXTURES.md).

Every array of ``inputs``, ``text``, ``visual``, ``zero_shot``, ``few_shot`` and ``batch``,
through the public API, within the tolerances of FIXTURES §11; and we do *not* reproduce what
unmodified anomalib computes on open_clip 3.x (``anomalib_on_open_clip_3_3_0.npz``, §8).
The backbone is the tiny CLIP of FIXTURES §1: InCTRL's ``state_init.npz`` without its heads.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from zsadlab.backbone import embed_image, encode_text, tiny_clip, tokenize
from zsadlab.prompts import INCTRL_ABNORMAL_STATES, NORMAL_STATES
from zsadlab.winclip import (
    WINCLIP_TEMPLATES,
    WinCLIP,
    WinCLIPConfig,
    class_text_embeddings,
    window_masks,
    winclip_prompt_texts,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLASSES = ("bottle", "metal_plate")
SHOTS = (1, 2)
SCALES = (2, 3)

# FIXTURES §11, recommended fp32 tolerances (absolute, rtol 0)
TOKEN_MAP = dict(atol=1e-5, rtol=0)
EMBEDDINGS = dict(atol=1e-4, rtol=0)
SCORES = dict(atol=1e-5, rtol=0)


def npz(name):
    return np.load(FIXTURES / "winclip" / f"{name}.npz")


def t(array):
    return torch.from_numpy(np.asarray(array))


def assert_close(actual, expected, **tol):
    torch.testing.assert_close(actual.detach().cpu(), t(expected).to(actual.dtype), **tol)


def upsampled(images_60):
    """Model input: nearest 4x upsampling of the 60-px images (FIXTURES §2)."""
    return t(np.repeat(np.repeat(images_60, 4, axis=-2), 4, axis=-1))  # [2, 3, 240, 240]


@pytest.fixture(scope="module")
def inputs():
    return npz("inputs")


@pytest.fixture(scope="module")
def model():
    clip = tiny_clip("vit16-240")
    state = np.load(FIXTURES / "inctrl" / "state_init.npz")
    weights = {k: t(state[k]).float() for k in state.files if not k.startswith(("adapter.", "diff_head"))}
    missing, unexpected = clip.load_state_dict(weights, strict=False)
    assert missing == ["logit_scale"] and not unexpected
    return WinCLIP(clip, WinCLIPConfig()).eval()


@pytest.fixture(scope="module")
def queries(inputs):
    return upsampled(inputs["query_images_60"])


@pytest.fixture(scope="module")
def references(inputs):
    return upsampled(inputs["ref_images_60"])


@pytest.fixture(scope="module")
def zero_shot(model, queries):
    """Per class, each query in its own b=1 call, concatenated (FIXTURES §5)."""
    return {c: [model(queries[i:i + 1], c) for i in range(2)] for c in CLASSES}


@pytest.fixture(scope="module")
def few_shot(model, queries, references):
    """Per k, each query in its own b=1 call against references[:k] encoded as one batch (FIXTURES §6)."""
    return {k: [model(queries[i:i + 1], "bottle", references[:k]) for i in range(2)] for k in SHOTS}


def cat(outputs, get):
    return torch.cat([get(out) for out in outputs])


# ---------------------------------------------------------------------------
# Inputs and text (FIXTURES §2, §3)
# ---------------------------------------------------------------------------


def test_normalised_inputs_are_the_uint8_images_through_clip_normalisation(inputs):
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)[:, None, None]
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)[:, None, None]
    for side in ("query", "ref"):
        normalised = (inputs[f"{side}_u8_60"].astype(np.float32) / 255 - mean) / std
        np.testing.assert_allclose(normalised, inputs[f"{side}_images_60"], atol=1e-6, rtol=0)


def test_states_and_the_21_templates_with_the_duplicate_are_anomalibs(inputs):
    assert list(inputs["normal_states"]) == list(NORMAL_STATES)
    assert list(inputs["anomalous_states"]) == list(INCTRL_ABNORMAL_STATES)
    assert list(inputs["templates"]) == list(WINCLIP_TEMPLATES)


@pytest.mark.parametrize("class_name", CLASSES)
def test_prompt_lists_are_state_major_with_the_class_name_verbatim(inputs, class_name):
    normal, anomalous = winclip_prompt_texts(class_name)
    assert normal == list(inputs[f"{class_name}_normal_prompts"])
    assert anomalous == list(inputs[f"{class_name}_anomalous_prompts"])
    assert torch.equal(tokenize(normal), t(inputs[f"{class_name}_normal_tokens"]).long())
    assert torch.equal(tokenize(anomalous), t(inputs[f"{class_name}_anomalous_tokens"]).long())


@pytest.mark.parametrize("class_name", CLASSES)
def test_text_embeddings_are_the_means_of_the_raw_prompt_embeddings(model, class_name):
    golden = npz("text")
    normal, anomalous = winclip_prompt_texts(class_name)
    with torch.no_grad():
        assert_close(encode_text(model.clip, tokenize(normal[:3])),
                     golden[f"{class_name}_normal_prompt_embeddings_head"], **EMBEDDINGS)
        assert_close(encode_text(model.clip, tokenize(anomalous[:3])),
                     golden[f"{class_name}_anomalous_prompt_embeddings_head"], **EMBEDDINGS)
    assert_close(class_text_embeddings(model.clip, class_name), golden[f"{class_name}_text_embeddings"], **EMBEDDINGS)
    assert_close(model.text_embeddings(class_name), golden[f"{class_name}_text_embeddings"], **EMBEDDINGS)


# ---------------------------------------------------------------------------
# Visual encoder and windows (FIXTURES §4)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_window_masks_list_each_windows_patches_row_major(inputs, scale):
    assert torch.equal(window_masks(15, scale), t(inputs[f"masks_s{scale}"]).long())
    first = {2: [0, 1, 15, 16], 3: [0, 1, 2, 15, 16, 17, 30, 31, 32]}[scale]
    assert window_masks(15, scale)[:, 0].tolist() == first


def test_windows_select_from_the_embedded_token_map(model, references):
    """The token map is read before ``ln_pre``; we select after it, which is the same per token (§9.4)."""
    golden = npz("visual")["R0_feature_map"]
    with torch.no_grad():
        ours = embed_image(model.clip.visual, references[:1])[0]  # [226, 128] after ln_pre
        assert_close(ours, model.clip.visual.ln_pre(t(golden)).numpy(), **TOKEN_MAP)


def test_image_embeddings_patch_tokens_and_window_embeddings(model, queries, references):
    golden = npz("visual")
    query = [model.features(queries[i:i + 1]) for i in range(2)]
    refs = model.features(references)  # the k=2 memory, one batch
    embeddings = torch.cat([query[0].image_embedding, query[1].image_embedding, refs.image_embedding])
    assert_close(embeddings, golden["image_embeddings"], **EMBEDDINGS)
    assert_close(refs.patch_tokens, golden["ref_patch_tokens"], **EMBEDDINGS)
    for scale, windows in zip(SCALES, refs.windows):
        assert_close(windows, golden[f"ref_window_embeddings_s{scale}"], **EMBEDDINGS)
    k1 = model.features(references[:1])  # the k=1 memory is R0 alone
    for scale, windows in zip(SCALES, k1.windows):
        assert_close(windows, golden[f"ref_window_embeddings_s{scale}"][0:1], **EMBEDDINGS)


def test_window_embeddings_do_not_collapse_to_one_vector(model, references):
    """FIXTURES §8: seq-first handling on a batch-first transformer makes every window embedding equal."""
    collapsed = npz("anomalib_on_open_clip_3_3_0")
    features = model.features(references)
    for scale, windows in zip(SCALES, features.windows):
        spread = (windows - windows.mean(dim=1, keepdim=True)).norm(dim=-1)  # [k, n]
        assert spread.min() > 1e-2, f"scale {scale}: some window equals the mean window"
        distance = (windows - t(collapsed[f"collapsed_window_embedding_s{scale}"])).norm(dim=-1)
        assert distance.min() > 1e-2


# ---------------------------------------------------------------------------
# Zero-shot WinCLIP (FIXTURES §5)
# ---------------------------------------------------------------------------

def per_scale(name: str, field: str) -> dict[str, str]:
    """``{f"{name}_s{scale}": f"{field}.{i}"}``: fixture key -> attribute path of a per-scale tuple."""
    return {f"{name}_s{scale}": f"{field}.{i}" for i, scale in enumerate(SCALES)}


def field(path: str):
    """The getter of an attribute path such as ``"few_shot.window_scores.0"``."""
    def get(out):
        for part in path.split("."):
            out = out[int(part)] if part.isdigit() else getattr(out, part)
        return out
    return get


# fixture key -> WinCLIPOutput attribute path (FIXTURES §5)
ZERO_SHOT_FIELDS = {"image_score": "image_score", "zs_map": "zero_shot_map",
                    **per_scale("window_scores", "window_scores"), **per_scale("map", "scale_maps")}


@pytest.mark.parametrize("name", ZERO_SHOT_FIELDS)
@pytest.mark.parametrize("class_name", CLASSES)
def test_zero_shot_scores_and_maps(zero_shot, class_name, name):
    golden = npz("zero_shot")
    assert_close(cat(zero_shot[class_name], field(ZERO_SHOT_FIELDS[name])), golden[f"{class_name}_{name}"], **SCORES)


def test_zero_shot_prediction_is_the_image_score_and_the_bilinear_map(model, queries):
    golden = npz("zero_shot")
    scores, maps = zip(*(model.predict(queries[i:i + 1], "bottle") for i in range(2)))
    assert_close(torch.cat(scores), golden["bottle_image_score"], **SCORES)
    assert_close(torch.cat(maps), golden["bottle_pixel_map"], **SCORES)


def test_zero_shot_map_is_not_constant_and_not_anomalibs_collapsed_map(zero_shot):
    collapsed = npz("anomalib_on_open_clip_3_3_0")
    zs_map = cat(zero_shot["bottle"], lambda o: o.zero_shot_map)
    assert zs_map.flatten(1).std(dim=1).min() > 1e-4
    assert (zs_map - t(collapsed["zs_map"])).abs().max() > 1e-3


# ---------------------------------------------------------------------------
# Few-shot WinCLIP+ (FIXTURES §6)
# ---------------------------------------------------------------------------

# fixture key (after "k{K}_") -> WinCLIPOutput attribute path (FIXTURES §6)
FEW_SHOT_FIELDS = {"va_patch_map": "few_shot.patch_map", "fs_map": "few_shot.map", "combined_map": "patch_map",
                   "pred_score": "score", **per_scale("va_window_scores", "few_shot.window_scores"),
                   **per_scale("va_map", "few_shot.scale_maps")}


@pytest.mark.parametrize("name", FEW_SHOT_FIELDS)
@pytest.mark.parametrize("k", SHOTS)
def test_few_shot_scores_and_maps(few_shot, k, name):
    golden = npz("few_shot")
    assert_close(cat(few_shot[k], field(FEW_SHOT_FIELDS[name])), golden[f"k{k}_{name}"], **SCORES)


def test_few_shot_prediction_is_the_combined_score_and_bilinear_map(model, queries, references):
    golden = npz("few_shot")
    memory = model.features(references)  # encoded once, reused per query
    scores, maps = zip(*(model.predict(queries[i:i + 1], "bottle", references=memory) for i in range(2)))
    assert_close(torch.cat(scores), golden["k2_pred_score"], **SCORES)
    assert_close(torch.cat(maps), golden["k2_pixel_map"], **SCORES)


@pytest.mark.parametrize("k", SHOTS)
def test_few_shot_map_peaks_on_the_defect_patches_of_q0(few_shot, k):
    top = few_shot[k][0].few_shot.map[0].flatten().topk(9).indices
    assert set(top.tolist()) == {100, 101, 102, 115, 116, 117, 130, 131, 132}


def test_few_shot_is_not_anomalibs_collapsed_output(few_shot):
    collapsed = npz("anomalib_on_open_clip_3_3_0")
    scores = cat(few_shot[2], lambda o: o.few_shot.window_scores[0])
    assert scores.min() > 1e-4 and (scores - t(collapsed["k2_va_window_scores_s2"])).abs().max() > 1e-4
    assert (cat(few_shot[2], lambda o: o.few_shot.map) - t(collapsed["k2_fs_map"])).abs().max() > 1e-3
    assert (cat(few_shot[2], lambda o: o.score) - t(collapsed["k2_pred_score"])).abs().max() > 1e-4
    assert (cat(few_shot[2], lambda o: o.score) - t(collapsed["zs_pred_score"])).abs().max() > 1e-4


# ---------------------------------------------------------------------------
# One batched call (FIXTURES §7)
# ---------------------------------------------------------------------------


def test_batch_of_two_gives_the_per_image_results(model, queries, references):
    golden = npz("batch")
    out = model(queries, ["bottle", "bottle"])
    assert_close(out.score, golden["zs_pred_score"], **SCORES)
    assert_close(out.zero_shot_map, golden["zs_map"], **SCORES)
    for k in SHOTS:
        out = model(queries, "bottle", references[:k])
        assert_close(out.score, golden[f"k{k}_pred_score"], **SCORES)
        assert_close(out.few_shot.map, golden[f"k{k}_fs_map"], **SCORES)
        assert_close(out.patch_map, golden[f"k{k}_combined_map"], **SCORES)
