"""MuSc parity: every array of fixtures/musc reproduced through the public API.

The fixtures come from the official code (xrli-U/MuSc @b76b93d) on the tiny CLIP of
fixtures/anomalyclip, at 112 px (native) and 140 px (rebuilt with GELU and a non-antialiased
bicubic positional table, FIXTURES.md §2.2); tolerances are FIXTURES.md §13.2.
"""
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from zsadlab.backbone import clip_from_openai_state_dict, factory_rebuilt
from zsadlab.musc import (MuSc, MuScConfig, lnamd, mutual_scoring, nearest_patch_distances, neighbourhood_means,
                          rscin, upsampled_maps)

FIX = Path(__file__).resolve().parents[1] / "fixtures"
LAYERS = (1, 3, 5, 7)  # official config convention: blocks 2, 4, 6, 8
R_LIST = (1, 3, 5)
SIZES = (112, 140)
ATOL = dict(cls=2e-6, tokens=2e-5, lnamd=2e-6, msm=5e-5, maps=1e-5, scores=1e-5)


def npz(name):
    return np.load(FIX / "musc" / f"{name}.npz")


def close(actual, expected, atol, rtol=0.0):
    actual = actual.detach().cpu().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def fixture_images(size):
    """Fixture §3: the 10 test images from the two AnomalyCLIP inputs (rolled, scaled, defect pasted)."""
    inputs, recipe = np.load(FIX / "anomalyclip" / "inputs.npz"), npz("set")
    x0, x1, m1 = inputs[f"images_{size}"][0], inputs[f"images_{size}"][1], inputs[f"masks_{size}"][1]
    flips = {"id": lambda a: a, "lr": lambda a: a[..., :, ::-1], "ud": lambda a: a[..., ::-1, :],
             "rot": lambda a: a[..., ::-1, ::-1]}
    images, masks = [], []
    for roll, contrast, offset, variant in zip(recipe["roll_px"], recipe["contrast"], recipe["offset"],
                                               recipe["defect_variant"]):
        base = np.roll(x0, shift=tuple(roll), axis=(1, 2)) * contrast + offset
        mask = flips[variant](m1) if variant else np.zeros_like(m1)
        images.append(np.where(mask[None] > 0.5, flips[variant](x1), base) if variant else base)
        masks.append(mask)
    return torch.from_numpy(np.stack(images).astype(np.float32)), np.stack(masks)


@pytest.fixture(scope="module")
def clip112():
    return clip_from_openai_state_dict(dict(np.load(FIX / "anomalyclip" / "tiny_clip_openai_sd.npz")))


def checker_clip(clip112, size):
    """The model as the external check builds it on pip open_clip (FIXTURES.md §2.2)."""
    if size == 112:
        return clip112
    model = open_clip.model.CLIP(embed_dim=64, vision_cfg=dict(image_size=140, layers=8, width=128, patch_size=14),
                                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=12),
                                 quick_gelu=False)
    state = clip112.state_dict()
    open_clip.model.resize_pos_embed(state, model, antialias=False)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def models(clip112):
    return {size: MuSc(checker_clip(clip112, size), MuScConfig(feature_layers=LAYERS, r_list=R_LIST, image_size=size))
            for size in SIZES}


@pytest.fixture(scope="module")
def extracted(models):
    return {size: models[size].extract(fixture_images(size)[0]) for size in SIZES}


@pytest.fixture(scope="module")
def scored(models):
    return {size: models[size].score_set(fixture_images(size)[0]) for size in SIZES}


# --- §3 the test set ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_test_set_images_match_the_fixture_checksums(size):
    images, masks = fixture_images(size)
    flat = images.numpy().reshape(10, -1).astype(np.float64)
    weights = np.arange(1, flat.shape[1] + 1, dtype=np.float64)
    checksums = np.stack([flat.sum(1), flat @ weights], axis=1)
    np.testing.assert_allclose(checksums, npz("set")[f"image_checksum_{size}"], rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(masks.reshape(10, -1).sum(1), npz("set")[f"mask_sum_{size}"])


def test_set_labels_and_official_split_are_consistent():
    recipe = npz("set")
    np.testing.assert_array_equal(recipe["labels"], (recipe["types"] != "good").astype(np.int64))
    np.testing.assert_array_equal(recipe["divide2_order"], recipe["divide2_subsets"].reshape(-1))
    assert list(recipe["names"][:2]) == ["000.png", "001.png"] and recipe["defect_variant"][2] == ""


# --- §2.2 / §4 features ---------------------------------------------------------------------------

def test_rebuilt_140_model_has_the_official_non_antialiased_positions_and_tokens(clip112, models):
    rebuilt = factory_rebuilt(clip112, 140, antialias=False)
    close(rebuilt.visual.positional_embedding, npz("vision")["pos_embed_140"], 1e-6)
    ours = MuSc(clip112, MuScConfig(feature_layers=LAYERS, image_size=140))  # official_build rebuilds it
    images = fixture_images(140)[0][:1]
    close(ours.extract(images)[1], models[140].extract(images)[1], ATOL["tokens"])


@pytest.mark.parametrize("size", SIZES)
def test_class_tokens_and_raw_block_tokens_match_official(extracted, size):
    vision = npz("vision")
    cls, tokens = extracted[size]
    close(cls, vision[f"cls_{size}"], ATOL["cls"])
    close(tokens[:, vision[f"tokens_images_{size}"]], vision[f"tokens_{size}"], ATOL["tokens"])


# --- §5 LNAMD ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("r", R_LIST)
def test_lnamd_of_the_models_tokens_matches_official(extracted, size, r):
    fixture = npz("lnamd")
    z = lnamd(extracted[size][1], r)  # [N, P, L, C]
    close(z[..., fixture[f"channels_{size}"]], fixture[f"lnamd_{size}_r{r}"], ATOL["lnamd"])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("r", R_LIST)
def test_lnamd_of_the_fixture_tokens_matches_official(size, r):
    vision, fixture = npz("vision"), npz("lnamd")
    z = lnamd(torch.from_numpy(vision[f"tokens_{size}"]), r)
    expected = fixture[f"lnamd_{size}_r{r}"][vision[f"tokens_images_{size}"]]
    close(z[..., fixture[f"channels_{size}"]], expected, ATOL["lnamd"])


@pytest.mark.parametrize("r", R_LIST)
def test_lnamd_norms_before_normalisation_match_official(extracted, r):
    norms = torch.stack([neighbourhood_means(layer, r).norm(dim=-1) for layer in extracted[112][1]], dim=-1)
    close(norms, npz("lnamd")[f"norm_112_r{r}"], 0, rtol=2e-6)


# --- §6 MSM --------------------------------------------------------------------------------------------

def test_patch_to_image_distances_match_official():
    msm = npz("msm")
    z = torch.from_numpy(msm["Z_112_r3_l1"])
    for i in range(10):
        others = [j for j in range(10) if j != i]
        close(nearest_patch_distances(z[i:i + 1], z[others])[0], msm["p2i_112_r3_l1"][i], ATOL["msm"])


def test_mutual_scoring_of_the_fixture_features_matches_official():
    msm = npz("msm")
    z = torch.from_numpy(msm["Z_112_r3_l1"])
    close(mutual_scoring(z, topmin_min=0.0, topmin_max=0.3), msm["msm_112"][1, 1], ATOL["msm"])
    close(mutual_scoring(z, topmin_min=0.2, topmin_max=0.6), msm["msm_interval_112_r3_l1"], ATOL["msm"])


@pytest.mark.parametrize("size", SIZES)
def test_mutual_scores_layer_means_and_patch_map_match_official(models, extracted, size):
    msm = npz("msm")
    tokens = extracted[size][1]
    per_r = [torch.stack([mutual_scoring(lnamd(tokens, r)[:, :, layer]) for layer in range(4)]) for r in R_LIST]
    close(torch.stack(per_r), msm[f"msm_{size}"], ATOL["msm"])
    close(torch.stack([scores.mean(0) for scores in per_r]), msm[f"layer_mean_{size}"], ATOL["maps"])
    close(models[size].patch_map(tokens, np.arange(10)), msm[f"patch_map_{size}"], ATOL["maps"])


def test_fewer_than_five_images_give_nan_scores_as_officially():
    z = torch.from_numpy(npz("msm")["Z_112_r3_l1"])
    assert torch.isnan(mutual_scoring(z[:4])).all() and not torch.isnan(mutual_scoring(z[:5])).any()


# --- §7 maps -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_anomaly_maps_and_their_maxima_match_official(scored, size):
    maps_fixture, msm = npz("maps"), npz("msm")
    _, maps = scored[size]
    close(maps[maps_fixture[f"anomaly_map_images_{size}"]], maps_fixture[f"anomaly_map_{size}"], ATOL["maps"])
    close(maps, upsampled_maps(torch.from_numpy(msm[f"patch_map_{size}"]), size), ATOL["maps"])
    close(maps.flatten(1).amax(1), maps_fixture[f"ac_score_{size}"], ATOL["maps"])


# --- §8 RsCIN ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_rscin_of_the_fixture_inputs_matches_official(size):
    fixture, ac, cls = npz("rscin"), npz("maps")[f"ac_score_{size}"], npz("vision")[f"cls_{size}"]
    close(rscin(ac, cls, k_list=(1, 2, 3)), fixture[f"scores_{size}"], ATOL["scores"])
    close(rscin(ac, cls, k_list=(1,)), fixture[f"ac_norm_{size}"], ATOL["scores"])
    for index, k in enumerate((1, 2, 3)):
        close(rscin(ac, cls, k_list=(k,)), fixture[f"per_k_{size}"][index], ATOL["scores"])
    similarity = torch.from_numpy(cls @ cls.T)
    close(similarity, fixture[f"similarity_{size}"], ATOL["cls"])
    for index, k in enumerate((1, 2, 3)):
        kept = torch.zeros(10, 10, dtype=torch.bool).scatter_(1, similarity.topk(k, dim=1).indices, True)
        np.testing.assert_array_equal(kept.numpy(), fixture[f"keep_{size}"][index])


def test_rscin_visa_and_mobile_settings_match_official():
    fixture, ac, cls = npz("rscin"), npz("maps")["ac_score_112"], npz("vision")["cls_112"]
    close(rscin(ac, cls, k_list=(1, 8, 9)), fixture["scores_k189_112"], ATOL["scores"])
    close(rscin(ac, cls, k_list=(2, 3, 1)), fixture["scores_mobile_mvtec_112"], ATOL["scores"])
    np.testing.assert_array_equal(rscin(ac, cls, k_list=(0,)), ac)


@pytest.mark.parametrize("size", SIZES)
def test_score_set_gives_the_official_final_scores(scored, size):
    close(scored[size][0], npz("rscin")[f"scores_{size}"], ATOL["scores"])


# --- §9 divide_num = 2 ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_subsets_score_among_themselves_and_rscin_runs_on_the_union(models, extracted, size):
    divide, recipe = npz("divide"), npz("set")
    subsets, order = recipe["divide2_subsets"], recipe["divide2_order"]
    cls, tokens = extracted[size]
    scores, maps = models[size].score_set(fixture_images(size)[0], subsets=[subsets[0], subsets[1]])
    close(cls[order], divide[f"cls_{size}"], ATOL["cls"])  # official outputs are in subset order
    close(scores[order], divide[f"scores_{size}"], ATOL["scores"])
    close(maps.flatten(1).amax(1)[order], divide[f"ac_score_{size}"], ATOL["maps"])
    patch_maps = torch.cat([models[size].patch_map(tokens, subset) for subset in subsets])
    close(patch_maps, divide[f"patch_map_{size}"], ATOL["maps"])
    close(maps[order], upsampled_maps(torch.from_numpy(divide[f"patch_map_{size}"]), size), ATOL["maps"])


@pytest.mark.parametrize("sub", (0, 1))
def test_mutual_scores_inside_each_subset_match_official(extracted, sub):
    subset = npz("set")["divide2_subsets"][sub]
    tokens = extracted[112][1][:, subset]
    scores = torch.stack([torch.stack([mutual_scoring(lnamd(tokens, r)[:, :, layer]) for layer in range(4)])
                          for r in R_LIST])
    close(scores, npz("divide")[f"msm_112_sub{sub}"], ATOL["msm"])
