"""WinCLIP / WinCLIP+ (zsadlab/winclip.py): shapes, batch semantics, inputs and the window machinery.

Numbers against anomalib are in tests/parity/test_winclip_parity.py; these tests pin the
behaviour on a random tiny model.
"""
import pytest
import torch

from zsadlab.backbone import embed_image, pooled_image_embedding, tiny_clip
from zsadlab.winclip import (
    WinCLIPConfig,
    WinCLIP,
    harmonic_aggregation,
    visual_association,
    window_embeddings,
    window_masks,
    window_sequences,
    winclip_prompt_texts,
)

SIZE, GRID = 240, 15
CLOSE = dict(atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def model():
    return WinCLIP(tiny_clip("vit16-240", seed=0), WinCLIPConfig())


def images(n, seed):
    """``[n, 3, S, S]`` random normalised images, the same for the same seed."""
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def queries():
    return images(3, seed=1)


@pytest.fixture(scope="module")
def references():
    return images(2, seed=2)  # k = 2 normal references


# --- configuration and prompts ---------------------------------------------------


def test_defaults_are_anomalibs_and_the_config_is_frozen():
    config = WinCLIPConfig()
    assert (config.scales, config.temperature, config.image_size) == ((2, 3), 0.07, 240)
    with pytest.raises(Exception):
        config.temperature = 0.01
    assert config.replace(scales=(2,)).scales == (2,)


def test_a_scale_below_one_patch_is_refused():
    with pytest.raises(ValueError, match="scales"):
        WinCLIPConfig(scales=(0, 2))


def test_prompt_ensemble_is_7_by_21_normal_and_4_by_21_anomalous_with_the_name_verbatim():
    normal, anomalous = winclip_prompt_texts("metal_nut")
    assert (len(normal), len(anomalous)) == (147, 84)
    assert normal[0] == "a cropped photo of the metal_nut." and anomalous[0] == "a cropped photo of the damaged metal_nut."


# --- window machinery --------------------------------------------------------------


@pytest.mark.parametrize("scale", (1, 2, 3, 15))
def test_window_masks_cover_every_position_of_every_window(scale):
    masks = window_masks(GRID, scale)  # [k*k, n]
    assert masks.shape == (scale * scale, (GRID - scale + 1) ** 2)
    rows, cols = masks // GRID, masks % GRID
    assert ((rows.amax(0) - rows.amin(0)) == scale - 1).all() and ((cols.amax(0) - cols.amin(0)) == scale - 1).all()


def test_a_window_larger_than_the_grid_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        window_masks(GRID, 16)


def test_window_sequences_put_cls_first_then_the_windows_tokens_image_major():
    tokens = torch.arange(2 * (1 + 9)).float().reshape(2, 10, 1)  # [B=2, 1+3*3, W=1]
    sequences = window_sequences(tokens, window_masks(3, 2))  # [2*4, 5, 1]
    assert sequences.shape == (8, 5, 1)
    assert sequences[0, :, 0].tolist() == [0, 1, 2, 4, 5]  # image 0, window 0: CLS + patches 0, 1, 3, 4
    assert sequences[7, :, 0].tolist() == [10, 15, 16, 18, 19]  # image 1, window 3


def test_harmonic_aggregation_is_the_harmonic_mean_of_the_covering_windows():
    masks = window_masks(4, 2)  # 9 windows on a 4x4 grid
    scores = torch.rand(2, 9, generator=torch.Generator().manual_seed(0)) + 0.1  # [B, n]
    expected = torch.zeros(2, 16)
    for p in range(16):
        covering = (masks == p).any(dim=0)  # [n]
        expected[:, p] = covering.sum() / (1 / scores[:, covering]).sum(dim=1)
    torch.testing.assert_close(harmonic_aggregation(scores, masks, 4), expected.reshape(2, 4, 4), **CLOSE)
    constant = harmonic_aggregation(torch.full((1, 9), 0.3), masks, 4)
    torch.testing.assert_close(constant, torch.full((1, 4, 4), 0.3), **CLOSE)


def test_visual_association_pools_every_reference_and_position():
    memory = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))  # [k, m, C]
    query = torch.stack([memory[1, 3], -memory[0, 0]])[None]  # [1, 2, C]
    association = visual_association(query, memory)  # [1, 2]
    assert association[0, 0].abs() < 1e-6  # found in shot 1 at another position
    assert 0 < association[0, 1] <= 1


def test_each_window_is_its_own_sequence_equal_to_a_per_window_loop(model, queries):
    visual = model.clip.visual
    masks = window_masks(GRID, 3)[:, :7]
    with torch.no_grad():
        tokens = embed_image(visual, queries[:2])  # [2, 1+P, W]
        batched = window_embeddings(visual, tokens, masks)  # [2, 7, D]
        for b in range(2):
            for w in range(7):
                alone = window_sequences(tokens[b:b + 1], masks[:, w:w + 1])  # [1, 10, W]
                looped = pooled_image_embedding(visual, visual.transformer(alone))
                torch.testing.assert_close(batched[b, w], looped[0], atol=1e-4, rtol=0)
    spread = (batched - batched.mean(dim=1, keepdim=True)).norm(dim=-1)
    assert spread.min() > 1e-2  # not the collapse of fixtures §8


def test_all_windows_of_a_batch_go_through_the_transformer_in_one_call_per_scale(model, queries):
    calls = []
    hook = model.clip.visual.transformer.resblocks[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        model.features(queries)
    finally:
        hook.remove()
    assert calls == [(3, 1 + GRID * GRID, 128), (3 * 196, 5, 128), (3 * 169, 10, 128)]


# --- predict -------------------------------------------------------------------------


def test_zero_shot_predict_gives_one_score_and_one_full_size_map_per_image(model, queries):
    scores, maps = model.predict(queries, "bottle")
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE)
    assert ((scores > 0) & (scores < 1)).all() and ((maps > 0) & (maps < 1)).all()
    assert maps.flatten(1).std(dim=1).min() > 0  # the map varies over the image


def test_few_shot_predict_gives_the_same_shapes_and_differs_from_zero_shot(model, queries, references):
    zero_scores, zero_maps = model.predict(queries, "bottle")
    scores, maps = model.predict(queries, "bottle", references=references)
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE)
    assert (scores - zero_scores).abs().max() > 1e-4 and (maps - zero_maps).abs().max() > 1e-4


def test_a_reference_is_anomaly_free_against_itself(model, references):
    out = model(references[:1], "bottle", references[:1])
    assert out.few_shot.map.abs().max() < 1e-4


def test_each_image_is_scored_independently_of_its_batch_mates(model, queries, references):
    for refs in (None, references):
        scores, maps = model.predict(queries, "bottle", references=refs)
        for i in range(3):
            alone_score, alone_map = model.predict(queries[i:i + 1], "bottle", references=refs)
            torch.testing.assert_close(scores[i:i + 1], alone_score, **CLOSE)
            torch.testing.assert_close(maps[i:i + 1], alone_map, **CLOSE)


def test_one_class_name_equals_the_same_name_per_image(model, queries):
    single = model.predict(queries, "bottle")
    listed = model.predict(queries, ["bottle"] * 3)
    for a, b in zip(single, listed):
        torch.testing.assert_close(a, b, **CLOSE)


def test_each_image_uses_its_own_class_name(model, queries):
    mixed, _ = model.predict(queries, ["bottle", "cable", "bottle"])
    cable, _ = model.predict(queries[1:2], "cable")
    bottle, _ = model.predict(queries[1:2], "bottle")
    torch.testing.assert_close(mixed[1:2], cable, **CLOSE)
    assert (cable - bottle).abs().max() > 0


def test_reference_features_computed_once_equal_reference_images(model, queries, references):
    memory = model.features(references)
    for a, b in zip(model.predict(queries, "bottle", references=memory),
                    model.predict(queries, "bottle", references=references)):
        torch.testing.assert_close(a, b, **CLOSE)


# --- bad input: one clear line -----------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 2, 3, 240, 240), (3, 240, 240), (0, 3, 240, 240),
                                   (2, 1, 240, 240)])
def test_references_of_the_wrong_shape_raise_one_line_naming_the_fix(model, queries, shape):
    with pytest.raises(ValueError) as err:
        model.predict(queries, "bottle", references=torch.zeros(shape))
    message = str(err.value)
    assert "\n" not in message and "references" in message and "[N, 3, 240, 240]" in message
    assert str(tuple(shape)) in message


def test_images_of_the_wrong_size_raise_one_line(model):
    with pytest.raises(ValueError, match=r"images must be .*resize to 240 px"):
        model.predict(images(1, seed=0)[..., :224, :224], "bottle")


def test_a_class_name_list_of_the_wrong_length_raises_one_line(model, queries):
    with pytest.raises(ValueError, match="2 class names for 3 images"):
        model.predict(queries, ["bottle", "cable"])


def test_the_backbone_is_frozen_and_stays_in_eval_mode(model):
    model.train()
    assert not model.clip.training and not any(p.requires_grad for p in model.parameters())
    assert all(key.startswith("clip.") for key in model.state_dict())  # masks are derived, not saved
    model.eval()


def test_winclip_and_winclip_plus_run_through_the_registry_and_the_engine(tmp_path):
    from zsadlab import engine
    from zsadlab.data import ensure_dataset
    from zsadlab.profiles import get_profile

    profile = get_profile("smoke", quiet=True)
    root = ensure_dataset("synthetic_ultrasound", tmp_path / "data")
    zero_shot = engine.build_model("winclip", profile, "cpu")
    data = engine.dataset_for(zero_shot, root).subset(engine.dataset_for(zero_shot, root).classes[0])
    table = engine.evaluate(zero_shot, data, batch_size=4, progress=False)
    assert set(table.columns) >= {"image_auroc", "pixel_auroc"} and len(table.rows) == 1
    few_shot = engine.build_model("winclip_plus", profile, "cpu")
    table = engine.test(few_shot, root, shots=1, seeds=[0], out_dir=tmp_path / "out")
    assert table.rows and "image_auroc_std" in table.columns
