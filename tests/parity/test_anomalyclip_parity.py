"""AnomalyCLIP parity: every array of fixtures/anomalyclip reproduced through the public API.

The fixtures were produced by running the official implementation (zqhang/AnomalyCLIP
@45ed4dd) on a tiny random CLIP; tolerances are FIXTURES.md §8 (frozen-backbone note included).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from zsadlab.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig, load_official_checkpoint, save_official_checkpoint
from zsadlab.backbone import clip_from_openai_state_dict, resized_positional_embedding
from zsadlab.prompts import ensemble_text_features

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "anomalyclip"
LAYERS = (2, 4, 6, 8)


def npz(name):
    return np.load(FIX / f"{name}.npz")


@pytest.fixture(scope="module")
def clip():
    return clip_from_openai_state_dict(dict(npz("tiny_clip_openai_sd")))


@pytest.fixture(scope="module")
def official_prompt_learner():
    return {k: torch.from_numpy(v) for k, v in npz("prompt_learner_init").items()}


def make_model(clip, state, size=112, **changes):
    cfg = AnomalyCLIPConfig(features=LAYERS, dpam_blocks=5, dpam_mode="vv", n_ctx=12, depth=9,
                            t_n_ctx=4, image_size=size).replace(**changes)
    model = AnomalyCLIP(clip, cfg)
    model.prompt_learner.load_state_dict(state)
    return model


def images(size):
    return torch.from_numpy(npz("inputs")[f"images_{size}"])


def close(actual, expected, atol):
    actual = actual.detach().cpu().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("mode,key", [(None, "plain"), ("vv", "dpam_vv"), ("qq", "dpam_qq"), ("kk", "dpam_kk")])
def test_image_encoder_matches_official_for_every_dpam_mode_at_112(clip, official_prompt_learner, mode, key):
    model = make_model(clip, official_prompt_learner, dpam_mode=mode)
    g, patches = model.encode_image(images(112))
    close(g, npz("vision")[f"{key}_global_112"], 1e-5)
    close(torch.stack(patches), npz("vision")[f"{key}_patch_112"], 1e-5)


def test_image_encoder_matches_official_at_140_with_interpolated_positions(clip, official_prompt_learner):
    vision = npz("vision")
    close(resized_positional_embedding(clip.visual, 10), vision["pos_embed_interp_140"], 1e-6)
    g, patches = make_model(clip, official_prompt_learner, size=140).encode_image(images(140))
    close(g, vision["dpam_vv_global_140"], 1e-5)
    close(torch.stack(patches), vision["dpam_vv_patch_140"], 1e-5)
    plain_g, _ = make_model(clip, official_prompt_learner, size=140, dpam_mode=None).encode_image(images(140))
    close(plain_g, vision["plain_global_140"], 1e-5)


def test_dpam_never_mutates_the_backbone(clip, official_prompt_learner):
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    make_model(clip, official_prompt_learner, size=140).predict(images(140))
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())
    plain = clip.encode_image(images(112))  # the same object still gives plain CLIP at the native size
    close(plain, npz("baseline")["image_embedding_112"], 1e-5)


def test_text_features_match_official(clip, official_prompt_learner):
    text = npz("text")
    model = make_model(clip, official_prompt_learner)
    embeddings, _ = model.prompt_learner.prompt_embeddings()
    close(embeddings, text["prompt_embeddings_input"], 1e-6)
    close(model.text_features(), text["text_features"][0], 1e-5)
    halfcast = make_model(clip, official_prompt_learner, deep_prompt_fp16=True)
    close(halfcast.text_features(), text["text_features_halfcast"][0], 1e-5)


@pytest.mark.parametrize("size", [112, 140])
def test_maps_and_image_scores_match_official_test_pipeline(clip, official_prompt_learner, size):
    maps = npz("maps")
    model = make_model(clip, official_prompt_learner, size=size)
    with torch.no_grad():
        g, patches = model.encode_image(images(size))
        text = model.text_features()
        from zsadlab.maps import patch_probabilities
        probs = torch.stack([patch_probabilities(p, text) for p in patches])
        close(probs, maps[f"similarity_tokens_{size}"], 1e-5)
        if size == 112:
            layer_maps = model.layer_similarity_maps(patches, text)
            close(torch.stack([m[:, 1] for m in layer_maps]), maps["similarity_map_anomalous_112"], 1e-5)
    scores, smooth = model.predict(images(size))  # batch 2: every image its own score
    _, raw = model.predict(images(size), smooth=False)
    close(raw, maps[f"anomaly_map_unsmoothed_{size}"], 1e-5)
    close(smooth, maps[f"anomaly_map_{size}"], 2e-5)
    close(scores, maps[f"text_probs_{size}"], 1e-5)


def test_predict_gives_the_same_answer_one_image_at_a_time(clip, official_prompt_learner):
    model = make_model(clip, official_prompt_learner)
    scores, maps = model.predict(images(112))
    for i in range(2):
        s, m = model.predict(images(112)[i:i + 1])
        close(s, scores[i:i + 1].numpy(), 1e-6)
        close(m, maps[i:i + 1].numpy(), 1e-5)


@pytest.mark.parametrize("size", [112, 140])
def test_one_training_step_matches_official(clip, official_prompt_learner, size):
    step = npz("train_step")
    inputs = npz("inputs")
    model = make_model(clip, official_prompt_learner, size=size)
    masks = torch.from_numpy(inputs[f"masks_{size}"])
    labels = torch.from_numpy(inputs["labels"])
    losses = model.losses(images(size), masks, labels)
    close(losses["focal"], step[f"focal_per_layer_{size}"], 1e-5)
    close(losses["dice_anomalous"], step[f"dice_anomalous_per_layer_{size}"], 1e-5)
    close(losses["dice_normal"], step[f"dice_normal_per_layer_{size}"], 1e-5)
    close(losses["pixel"], step[f"pixel_loss_{size}"], 1e-5)
    close(losses["image"], step[f"image_loss_{size}"], 1e-5)
    close(losses["total"], step[f"total_loss_{size}"], 1e-5)
    optimizer = torch.optim.Adam(model.prompt_learner.parameters(), lr=1e-3, betas=(0.5, 0.999))
    optimizer.zero_grad()
    losses["total"].backward()
    params = dict(model.prompt_learner.named_parameters())
    for name in ["ctx_pos", "ctx_neg"] + [f"compound_prompts_text.{i}" for i in range(8)]:
        expected = step[f"grad_{size}/{name}"]
        close(params[name].grad, expected, 1e-4 * np.abs(expected).max())
    assert all(params[f"compound_prompt_projections.{i}.weight"].grad is None for i in range(8))
    optimizer.step()
    for name in ["ctx_pos", "ctx_neg"] + [f"compound_prompts_text.{i}" for i in range(8)]:
        close(params[name], step[f"after_{size}/{name}"], 1e-6)


def test_object_aware_ensemble_baseline_matches_official(clip):
    base = npz("baseline")
    text = ensemble_text_features(clip, "bottle")
    close(text, base["ensemble_text_features_bottle"], 1e-5)
    for size in (112, 140):
        from zsadlab.backbone import block_tokens, pooled_image_embedding
        from zsadlab.maps import image_scores
        with torch.no_grad():
            _, final = block_tokens(clip.visual, images(size), [8])
            embedding = pooled_image_embedding(clip.visual, final)
        close(embedding, base[f"image_embedding_{size}"], 1e-5)
        close(image_scores(embedding, text), base[f"prob_abnormal_T007_{size}"], 1e-5)


def test_official_checkpoint_roundtrip(clip, official_prompt_learner, tmp_path):
    model = make_model(clip, official_prompt_learner)
    path = save_official_checkpoint(model, tmp_path / "epoch_1.pth")
    other = make_model(clip, {k: torch.zeros_like(v) if v.is_floating_point() else v
                              for k, v in official_prompt_learner.items()})
    load_official_checkpoint(other, path)
    close(other.text_features(), npz("text")["text_features"][0], 1e-5)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"prompt_learner"} and set(saved["prompt_learner"]) == set(official_prompt_learner)


def test_cached_inference_text_follows_every_change_of_the_prompts(clip, official_prompt_learner):
    model = make_model(clip, official_prompt_learner)
    with torch.no_grad():
        first = model.text_features()
        assert model.text_features() is first  # cached while nothing changed
        model.prompt_learner.ctx_pos.add_(0.1)
        assert not torch.allclose(model.text_features(), first)
        model.prompt_learner.load_state_dict(official_prompt_learner)
        close(model.text_features(), npz("text")["text_features"][0], 1e-5)
    assert model.text_features().requires_grad  # training path is never cached
