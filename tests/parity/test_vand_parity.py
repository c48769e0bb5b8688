"""VAND (APRIL-GAN) parity: every array of fixtures/vand reproduced through zsadlab.vand.

The fixtures were produced by running the official code (ByChelsea/VAND-APRIL-GAN @f13b8a6)
on the tiny random CLIP of fixtures/anomalyclip with three token rows patched in; the
tolerances are FIXTURES.md §12.2. At 112 px (native) the model is the OpenAI build
(QuickGELU), at 140 px the official rebuild (exact GELU, bicubic antialiased positions).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from zsadlab.backbone import clip_from_openai_state_dict, tokenize
from zsadlab.data.dataset import normalised_tensor, resized_rgb
from zsadlab.maps import similarity_logits
from zsadlab.prompts import ensemble_sentences
from zsadlab.vand import (
    VAND, VANDConfig, LinearLayers, bicubic_positional_embedding, make_optimizer, nearest_patch_distance,
    normalise_fewshot_scores, official_mask, upsampled_grid, vand_text_features,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures"
LAYERS = (2, 4, 6, 8)
SIZES = (112, 140)
CLASSES = ("bottle", "metal_plate")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def npz(name, folder="vand"):
    return np.load(FIX / folder / f"{name}.npz")


def close(actual, expected, atol):
    actual = actual.detach().cpu().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    assert actual.shape == np.shape(expected)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def clip():
    """The tiny OpenAI-format CLIP with fixtures/vand §2.1's three token rows written in."""
    state = dict(npz("tiny_clip_openai_sd", "anomalyclip"))
    patch = npz("model_patch")
    table = state["token_embedding.weight"].astype(np.float32).copy()
    table[patch["token_embedding_ids"]] = patch["token_embedding_rows"]
    state["token_embedding.weight"] = table
    return clip_from_openai_state_dict(state)


@pytest.fixture(scope="module")
def official_linear():
    return {k: torch.from_numpy(v) for k, v in npz("linearlayer_init").items()}


@pytest.fixture(scope="module")
def models(clip, official_linear):
    built = {}
    for size in SIZES:
        model = VAND(clip, VANDConfig(features=LAYERS, image_size=size))
        model.trainable_linearlayer.load_state_dict(official_linear)
        built[size] = model
    return built


def query_images(size):
    """Test images 0..2 of fixtures §3: X0, X1 and X1 flipped left-right."""
    x = npz("inputs", "anomalyclip")[f"images_{size}"]
    return torch.from_numpy(np.stack([x[0], x[1], x[1][:, :, ::-1]]).copy())


def query_masks(size):
    m = npz("inputs", "anomalyclip")[f"masks_{size}"]
    return torch.from_numpy(np.stack([m[0], m[1], m[1][:, ::-1]]).copy())


def references(size):
    """Reference 0 (X0 moved right by one patch, wrapping) and 1 (X0 upside down)."""
    x0 = npz("inputs", "anomalyclip")[f"images_{size}"][0]
    return torch.from_numpy(np.stack([np.roll(x0, 14, axis=2), x0[:, ::-1, :]]).copy())


def checksum(images):
    flat = images.double().flatten(1)  # [N, 3*S*S]
    return torch.stack([flat.sum(1), (flat * torch.arange(1, flat.shape[1] + 1, dtype=torch.float64)).sum(1)], 1)


# --- inputs, preprocessing, initial weights ---------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_derived_inputs_are_the_ones_the_fixtures_were_made_from(size):
    vision = npz("vision")
    np.testing.assert_array_equal(checksum(query_images(size)).numpy(), vision[f"test_checksum_{size}"])
    np.testing.assert_array_equal(checksum(references(size)).numpy(), vision[f"ref_checksum_{size}"])
    np.testing.assert_array_equal(query_masks(size).double().sum((1, 2)).numpy(), vision[f"test_mask_sum_{size}"])
    np.testing.assert_array_equal(vision["test_labels"], [0, 1, 1])


def test_images_are_squashed_bicubic_and_masks_resized_bilinear_then_thresholded():
    pre = npz("preprocess")
    resized = resized_rgb(pre["raw_rgb"], 112)
    np.testing.assert_array_equal(resized, pre["resized_rgb_112"])
    close(normalised_tensor(resized, OPENAI_MEAN, OPENAI_STD), pre["model_input_112"], 1e-6)
    np.testing.assert_array_equal(official_mask(pre["raw_mask"], 112).numpy()[None].astype(np.uint8),
                                  pre["mask_binary_112"])


def test_linear_layers_have_the_official_keys_and_default_init_under_seed_111(clip):
    torch.manual_seed(111)
    model = VAND(clip, VANDConfig(features=LAYERS, image_size=112))
    expected = npz("linearlayer_init")
    state = model.trainable_linearlayer.state_dict()
    assert list(state) == list(expected.files)
    for key in expected.files:
        close(state[key], expected[key], 1e-7)
    assert isinstance(model.trainable_linearlayer, LinearLayers)


# --- text -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSES)
def test_prompt_ensemble_tokens_keep_the_underscore(name):
    text = npz("text")
    normal, abnormal = ensemble_sentences(name)
    np.testing.assert_array_equal(tokenize(normal).numpy(), text[f"tokens_{name}_normal"])
    np.testing.assert_array_equal(tokenize(abnormal).numpy(), text[f"tokens_{name}_abnormal"])


def test_sentence_embeddings_match_official_at_112(clip):
    from zsadlab.backbone import encode_text
    text = npz("text")
    normal, abnormal = ensemble_sentences("bottle")
    with torch.no_grad():
        close(encode_text(clip, tokenize(normal)), text["sentence_embeddings_bottle_normal_112"], 2e-5)
        close(encode_text(clip, tokenize(abnormal)), text["sentence_embeddings_bottle_abnormal_112"], 2e-5)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", CLASSES)
def test_text_features_match_official_with_the_gelu_of_each_size(models, name, size):
    expected = npz("text")[f"text_features_{name}_{size}"]  # [D, 2], columns [normal, abnormal]
    close(models[size].text_features(name).T, expected, 1e-6)
    close(vand_text_features(models[size].clip, name).T, expected, 1e-6)


# --- image side -------------------------------------------------------------------------------


def test_positional_table_at_140_is_the_bicubic_antialiased_resize(clip, models):
    expected = npz("vision")["pos_embed_140"]
    close(bicubic_positional_embedding(clip.visual.positional_embedding, 10), expected, 2e-6)
    close(models[140].clip.visual.positional_embedding, expected, 2e-6)


@pytest.mark.parametrize("size", SIZES)
def test_global_embedding_and_raw_block_tokens_match_official(models, size):
    vision = npz("vision")
    g, tokens = models[size].encode_image(query_images(size), LAYERS)
    close(g, vision[f"global_{size}"], 2e-5)
    close(torch.stack(tokens), vision[f"tokens_{size}"], 2e-5)


def test_the_140_model_shares_weights_and_leaves_the_given_clip_untouched(clip, models):
    rebuilt = models[140].clip
    assert rebuilt is not clip
    assert rebuilt.visual.conv1.weight is clip.visual.conv1.weight
    assert type(clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert isinstance(rebuilt.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert clip.visual.positional_embedding.shape[0] == 65
    assert models[112].clip is clip  # native size: the OpenAI build as it is


# --- zero-shot ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_zero_shot_logits_maps_and_scores_match_official(models, size):
    zero = npz("zero_shot")
    model = models[size]
    with torch.no_grad():
        _, tokens = model.encode_image(query_images(size), LAYERS)
        projected = model.trainable_linearlayer(tokens)
        if size == 112:
            close(torch.stack(projected), zero["proj_112"], 2e-5)
        for name, suffix in (("bottle", ""), ("metal_plate", "_metal_plate")):
            text = model.text_features(name)
            logits = torch.stack([similarity_logits(p, text, 1 / 100) for p in projected])
            close(logits, zero[f"logits{suffix}_{size}"], 2e-4)
        if size == 112:
            layer_maps = model.layer_probabilities([t[1:2] for t in tokens], model.text_features("bottle"))
            close(torch.stack([m[0, 1] for m in layer_maps]), zero["layer_maps_112_img1"], 5e-5)
    scores, maps = model.predict(query_images(size), ["bottle"] * 3)
    close(scores, zero[f"text_probs_{size}"], 5e-6)
    close(maps, zero[f"anomaly_map_{size}"], 5e-5)
    metal_scores, _ = model.predict(query_images(size), "metal_plate")
    close(metal_scores, zero[f"text_probs_metal_plate_{size}"], 5e-6)


# --- few-shot -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k", [1, 2])
def test_few_shot_memory_distances_maps_and_scores_match_official(models, size, k):
    few = npz("few_shot")
    model = models[size]
    refs = references(size)[:k]
    memory = model.reference_memory(refs)
    if size == 112:
        close(torch.stack(memory), few["memory_112"][:, :64 * k], 2e-5)
    _, tokens = model.encode_image(query_images(size), LAYERS)
    distances = torch.stack([nearest_patch_distance(t[:, 1:], m) for t, m in zip(tokens, memory)])
    close(distances, few[f"dist_k{k}_{size}"], 5e-6)
    text_probs, maps = model.predict(query_images(size), "bottle", references=refs)
    close(maps, few[f"anomaly_map_k{k}_{size}"], 5e-5)
    close(maps.flatten(1).amax(1), few[f"map_max_k{k}_{size}"], 5e-5)
    scores = normalise_fewshot_scores(text_probs, maps)
    assert scores.dtype == np.float64
    close(scores, few[f"image_score_k{k}_{size}"], 5e-6)


def test_few_shot_upsampling_is_bilinear_with_aligned_corners():
    values = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])  # [1, 4, 1] on a 2 x 2 grid
    up = upsampled_grid(values, 3)[0, 0]
    close(up, np.array([[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]]), 1e-7)


# --- training -----------------------------------------------------------------------------------


BATCHES = {1: ([0, 1], ["bottle", "metal_plate"]), 2: ([2, 0], ["metal_plate", "bottle"])}
PARAMS = [f"fc.{i}.{p}" for i in range(4) for p in ("weight", "bias")]


@pytest.mark.parametrize("size", SIZES)
def test_two_steps_of_the_official_recipe_match_official(clip, official_linear, size):
    step = npz("train_step")
    model = VAND(clip, VANDConfig(features=LAYERS, image_size=size))
    model.trainable_linearlayer.load_state_dict(official_linear)
    optimizer = make_optimizer(model)  # the official Adam, lr 1e-3, betas (0.5, 0.999)
    params = dict(model.trainable_linearlayer.named_parameters())
    small_grad = {}
    for number, (rows, names) in BATCHES.items():
        terms = model.losses(query_images(size)[rows], query_masks(size)[rows], None, names)
        close(terms["focal"], step[f"focal_step{number}_{size}"], 1e-5)
        close(terms["dice"], step[f"dice_step{number}_{size}"], 1e-5)
        close(terms["total"], step[f"loss_step{number}_{size}"], 1e-5)
        optimizer.zero_grad()
        terms["total"].backward()
        grad_key = f"grad_step{number}_{size}"
        if f"{grad_key}/fc.0.weight" in step:  # step 1 at both sizes, step 2 at 112
            for name in PARAMS:
                expected = step[f"{grad_key}/{name}"]
                close(params[name].grad, expected, 1e-4 * np.abs(expected).max())
                if number == 1:
                    small_grad[name] = np.abs(expected) < 1e-5  # §8.4: Adam amplifies rounding there
        optimizer.step()
        after_key = f"after_step{number}_{size}"
        if f"{after_key}/fc.0.weight" in step:
            for name in PARAMS:
                keep = ~small_grad[name]
                close(params[name].detach().numpy()[keep], step[f"{after_key}/{name}"][keep], 5e-6)
                close(params[name].detach().numpy()[~keep], step[f"{after_key}/{name}"][~keep], 2e-3)
