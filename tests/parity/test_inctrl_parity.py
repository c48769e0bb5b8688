"""InCTRL reproduces the official code's numbers (tests/fixtures/inctrl/FIXTURES.md).

Every array of ``forward_eval.npz`` and the ``fixedlayout/`` training step of
``train_step.npz``, through the public API, within the tolerances of FIXTURES §6.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from zsadlab import inctrl
from zsadlab.backbone import encode_text, tiny_clip, tokenize
from zsadlab.engine import train_step
from zsadlab.inctrl import (
    InCTRL,
    InCTRLConfig,
    class_text_features,
    load_official_state_dict,
    make_optimizer,
    official_state_dict,
    text_logits,
)
from zsadlab.prompts import inctrl_prompt_texts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "inctrl"
SHOTS = (2, 4)

# FIXTURES §6, recommended fp32 tolerances (they hold on every x86 CPU kernel and thread count)
BACKBONE = dict(atol=1e-5, rtol=1e-5)
TEXT = dict(atol=1e-6, rtol=0)
PATCH = dict(atol=1e-6, rtol=0)
TOKENS = dict(atol=1e-5, rtol=0)
HEADS = dict(atol=1e-4, rtol=0)  # eval BN with a small running_var amplifies kernel noise (hl_score 3.2e-5)
LOSS = dict(atol=1e-5, rtol=0)
TRAIN_OUTPUTS = dict(atol=1e-4, rtol=0)
BUFFERS = dict(atol=1e-4, rtol=1e-4)  # a wrong momentum or an unbiased running variance is off by > 1e-2
STABLE_UPDATE, UNSTABLE_UPDATE = 1e-5, 2e-3  # |new - ref| where stable_mask is true / false


def npz(name):
    return np.load(FIXTURES / f"{name}.npz")


def t(array):
    return torch.from_numpy(np.asarray(array))


def assert_close(actual, expected, **tol):
    torch.testing.assert_close(actual.detach().cpu(), t(expected).to(actual.dtype), **tol)


@pytest.fixture(scope="module")
def inputs():
    return npz("inputs")


@pytest.fixture(scope="module")
def golden():
    return npz("forward_eval")


@pytest.fixture(scope="module")
def train_golden():
    return npz("train_step")


def fresh_model():
    """The tiny backbone of FIXTURES §1 with the official initial weights (``state_init.npz``)."""
    model = InCTRL(tiny_clip("vit16-240"), InCTRLConfig(layers=(7, 9, 11)))
    return load_official_state_dict(model, npz("state_init"))


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return fresh_model().eval()


@pytest.fixture(scope="module")
def outputs(model, inputs):
    """Test path: per query image (b=1, the official protocol), and both queries in one call (b=2)."""
    queries, prompts = t(inputs["query_images"]), t(inputs["prompt_images"])
    with torch.no_grad():
        per_image = {k: [model(queries[i:i + 1], prompts[:k], "bottle") for i in range(2)] for k in SHOTS}
        batched = {k: model(queries, prompts[:k], "bottle") for k in SHOTS}
    return per_image, batched


FIELDS = {  # forward_eval.npz name -> InCTRLOutput field (FIXTURES §4)
    "patch_map_per_layer": ("layer_patch_maps", PATCH),
    "patch_ref_map": ("patch_map", PATCH),
    "fg_score": ("fine_grained_score", PATCH),
    "token_ref": ("image_residual", TOKENS),
    "img_ref_score": ("image_residual_score", HEADS),
    "text_score": ("text_score", TEXT),
    "holistic_map": ("holistic_map", HEADS),
    "hl_score": ("holistic_score", HEADS),
    "final_score": ("final_score", HEADS),
}


# ---------------------------------------------------------------------------
# Backbone and text prior
# ---------------------------------------------------------------------------


def test_image_tokens_are_the_raw_streams_after_blocks_7_9_11_and_the_embedding_is_encode_image(model, inputs, golden):
    query = model.image_features(t(inputs["query_images"]))
    assert_close(query.patch_tokens, golden["query_patch_tokens"], **BACKBONE)
    assert_close(query.embedding, golden["query_image_embed"], **BACKBONE)
    prompts = model.image_features(t(inputs["prompt_images"]))
    assert_close(prompts.patch_tokens[:2], golden["prompt_patch_tokens_k2"], **BACKBONE)
    assert_close(prompts.patch_tokens.norm(dim=-1), golden["prompt_patch_token_norms"], **BACKBONE)
    assert_close(prompts.embedding, golden["prompt_image_embed"], **BACKBONE)


def test_prompt_texts_and_tokens_are_the_official_lists(inputs):
    normal, anomaly = inctrl_prompt_texts(str(inputs["class_name"]))
    assert normal == list(inputs["normal_texts"]) and anomaly == list(inputs["anomaly_texts"])
    assert torch.equal(tokenize(normal), t(inputs["pos_tokens"]).long())
    assert torch.equal(tokenize(anomaly), t(inputs["neg_tokens"]).long())


def test_eot_truncated_text_tower_equals_the_full_77_token_pass(model, inputs, golden):
    """Causal mask: the EOT feature ignores the padding, so cutting after the last EOT is exact up to fp32 rounding."""
    prototypes = []
    for side in ("pos", "neg"):
        ids = t(inputs[f"{side}_tokens"]).long()
        with torch.no_grad():
            truncated, full = encode_text(model.clip, ids), model.clip.encode_text(ids)
        assert_close(truncated, full.numpy(), **BACKBONE)
        assert_close(truncated[:8], golden[f"text_embed_{side}_first8"], **BACKBONE)
        prototypes.append(torch.nn.functional.normalize(torch.nn.functional.normalize(full, dim=-1).mean(0), dim=-1))
    assert_close(torch.stack(prototypes), golden["text_features"], **TEXT)  # the exact (77-token) path agrees too


def test_text_prior_features_logits_and_softmax(model, golden):
    features = model.text_features("bottle")
    assert_close(features, golden["text_features"], **TEXT)
    assert_close(class_text_features(model.clip, "bottle"), golden["text_features"], **TEXT)
    embedding = t(golden["query_image_embed"])
    assert_close(torch.nn.functional.normalize(embedding, dim=-1), golden["query_image_embed_normalized"], **TEXT)
    logits = text_logits(embedding, features.expand(2, -1, -1), scale=100.0)
    assert_close(logits, golden["text_logits"], atol=1e-4, rtol=0)  # 100 x a cosine
    assert_close(logits.softmax(dim=-1), golden["text_softmax"], **TEXT)


# ---------------------------------------------------------------------------
# Test-time forward (FIXTURES §4)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", SHOTS)
@pytest.mark.parametrize("name", FIELDS)
def test_per_image_forward_matches_the_official_b1_arrays(outputs, golden, k, name):
    field, tol = FIELDS[name]
    per_image, _ = outputs
    actual = torch.cat([getattr(out, field) for out in per_image[k]])
    assert_close(actual, golden[f"k{k}_{name}"], **tol)


@pytest.mark.parametrize("k", SHOTS)
@pytest.mark.parametrize("name", FIELDS)
def test_batch_of_two_gives_the_per_image_b1_results(outputs, golden, k, name):
    field, tol = FIELDS[name]
    _, batched = outputs
    assert_close(getattr(batched[k], field), golden[f"k{k}_{name}"], **tol)


@pytest.mark.parametrize("k", SHOTS)
def test_image_residual_adapts_each_shot_then_averages_prompt_minus_query(model, golden, k):
    query, prompts = t(golden["query_image_embed"]), t(golden["prompt_image_embed"])[:k]
    with torch.no_grad():
        token_ad = model.adapter(query)  # [2, D]
        per_shot = model.adapter(prompts).expand(2, -1, -1)  # [2, K, D]
    assert_close(token_ad, golden[f"k{k}_token_ad"], **TOKENS)
    assert_close(per_shot, golden[f"k{k}_token_n_adapted_per_shot"], **TOKENS)
    assert_close(per_shot.mean(dim=1), golden[f"k{k}_token_n_mean"], **TOKENS)


@pytest.mark.parametrize("k", SHOTS)
def test_we_do_not_reproduce_the_official_batch_mixing(outputs, golden, k):
    """FIXTURES §3.8: the official b=2 call mixes layers/images/shots; ours stays per image."""
    _, batched = outputs
    official = t(golden[f"k{k}_batched_b2_official_final_score"])
    assert (batched[k].final_score - official).abs().max() > 1e-3
    assert (t(golden[f"k{k}_final_score"]) - official).abs().max() > 1e-3


def test_per_query_prompts_equal_shared_prompts(model, inputs, golden):
    queries, prompts = t(inputs["query_images"]), t(inputs["prompt_images"])
    with torch.no_grad():
        out = model(queries, prompts[:4].expand(2, -1, -1, -1, -1), ["bottle", "bottle"])
    assert_close(out.final_score, golden["k4_final_score"], **HEADS)
    assert_close(out.patch_map, golden["k4_patch_ref_map"], **PATCH)


# ---------------------------------------------------------------------------
# Training step, fixed (per-image) layout (FIXTURES §5)
# ---------------------------------------------------------------------------


def training_batch(inputs):
    prompts = t(inputs["prompt_images"])[t(inputs["train_prompt_index"])]  # [4, 2, 3, 240, 240]
    return t(inputs["train_query_images"]), prompts, "bottle", t(inputs["train_labels"])


TRAIN_FIELDS = {
    "final_score": "final_score", "img_ref_score": "image_residual_score", "patch_ref_map": "patch_map",
    "text_score": "text_score", "token_ref": "image_residual", "holistic_map": "holistic_map",
    "hl_score": "holistic_score", "fg_score": "fine_grained_score",
}


def test_train_mode_forward_and_losses(inputs, train_golden):
    model = fresh_model().train()
    queries, prompts, names, labels = training_batch(inputs)
    out = model(queries, prompts, names)
    for name, field in TRAIN_FIELDS.items():
        assert_close(getattr(out, field), train_golden[f"fixedlayout/{name}"], **TRAIN_OUTPUTS)
    terms = model.loss_terms(out, labels)
    assert_close(terms["loss_final"], train_golden["fixedlayout/loss_final"], **LOSS)
    assert_close(terms["loss_image_residual"], train_golden["fixedlayout/loss_img_ref"], **LOSS)
    assert_close(model.loss(out, labels), train_golden["fixedlayout/loss"], **LOSS)


def test_one_adamw_step_updates_exactly_the_official_parameters_and_buffers(inputs, train_golden):
    model = fresh_model()
    before = {k: v.clone() for k, v in official_state_dict(model).items()}
    queries, prompts, names, labels = training_batch(inputs)
    batch = {"image": queries, "prompts": prompts, "class_name": names, "label": labels}
    losses = train_step(model, make_optimizer(model), batch, recipe=inctrl.RECIPE)  # the one trainer's step
    assert losses["total"] == pytest.approx(float(train_golden["fixedlayout/loss"]), abs=LOSS["atol"])

    after = official_state_dict(model)
    updated = {k.split("/", 2)[2] for k in train_golden.files if k.startswith("fixedlayout/state/")}
    for key, value in after.items():
        if key not in updated:  # backbone, bn1 (never used), untouched
            assert torch.equal(value, before[key]), key
            continue
        expected = t(train_golden[f"fixedlayout/state/{key}"])
        mask_key = f"fixedlayout/stable_mask/{key}"
        if mask_key not in train_golden.files:  # BN running buffers
            torch.testing.assert_close(value, expected.to(value.dtype), **BUFFERS)
            continue
        stable = t(train_golden[mask_key])
        diff = (value - expected).abs()
        assert diff.masked_fill(~stable, 0).max() <= STABLE_UPDATE, key  # well-defined AdamW updates
        assert diff.masked_fill(stable, 0).max() <= UNSTABLE_UPDATE, key  # |g| ~ eps: sign arbitrary within lr
