"""InCTRL (zsadlab/inctrl.py): what the model computes, caches, trains and saves.

Numbers against the official code are in tests/parity/test_inctrl_parity.py;
these tests pin the behaviour on a random tiny model.
"""
import dataclasses
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsadlab import inctrl
from zsadlab.backbone import tiny_clip
from zsadlab.engine import train_step
from zsadlab.inctrl import (
    InCTRL,
    InCTRLConfig,
    focal_loss_on_scores,
    image_residual,
    load_checkpoint,
    load_official_state_dict,
    make_optimizer,
    official_state_dict,
    patch_residual_maps,
    save_checkpoint,
)
from zsadlab.prompts import NORMAL_STATES, inctrl_prompt_texts

SIZE = 240
HEADS = ("adapter.", "diff_head.", "diff_head_ref.")


def make_model(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return InCTRL(tiny_clip("vit16-240", seed=seed))


@pytest.fixture(scope="module")
def model():
    return make_model().eval()


def batch(queries, prompts, labels=(0, 1, 1)):
    """A collated training batch of "bottle" queries with their prompts, as the trainer's step reads it."""
    return {"image": queries, "prompts": prompts, "class_name": ["bottle"] * len(queries), "label": torch.tensor(labels)}


def images(n, seed):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def queries():
    return images(3, seed=1)  # [3, 3, S, S]


@pytest.fixture(scope="module")
def prompts():
    return images(2, seed=2)  # [K=2, 3, S, S]


class ImageCounter:
    """Counts images entering the vision tower (a hook on the patch embedding)."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.clip.visual.conv1.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.count += args[0].shape[0]


# --- configuration and parameters -----------------------------------------------------


def test_config_defaults_are_the_papers_vit_b_16_plus_240_setup():
    config = InCTRLConfig()
    assert config.layers == (7, 9, 11) and config.image_size == 240
    assert config.text_scale == 100.0 and config.adapter_reduction == 4
    assert (config.lr, config.weight_decay, config.shots) == (1e-3, 0.01, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.layers = (1,)


def test_only_adapter_and_heads_are_trainable_and_the_backbone_stays_in_eval_mode(model):
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(HEADS) for name in trainable)
    assert not any(p.requires_grad for p in model.clip.parameters())
    model.train()
    assert model.diff_head.training and not model.clip.training
    model.eval()


def test_heads_have_the_official_layout_including_the_unused_bn1(model):
    keys = official_state_dict(model)
    assert keys["adapter.fc.0.weight"].shape == (160, 640) and keys["adapter.fc.2.weight"].shape == (640, 160)
    assert keys["diff_head.projection1.weight"].shape == (128, 225)  # the patch map is its input
    assert keys["diff_head_ref.projection1.weight"].shape == (128, 640)
    assert "diff_head.bn1.running_var" in keys and "diff_head_ref.bn1.weight" in keys


# --- the pieces ----------------------------------------------------------------------------


def test_patch_residual_is_half_one_minus_cosine_to_the_nearest_patch_of_any_shot():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3, 5, 8, generator=gen)  # [B, L, P, W]
    prompts = torch.randn(2, 3, 2 * 5, 8, generator=gen)  # [B, L, K*P, W]
    expected = torch.empty(2, 3, 5)
    for b in range(2):
        for layer in range(3):
            for p in range(5):
                cos = F.cosine_similarity(query[b, layer, p][None], prompts[b, layer], dim=-1)
                expected[b, layer, p] = (0.5 * (1 - cos)).min()
    torch.testing.assert_close(patch_residual_maps(query, prompts), expected, atol=1e-6, rtol=0)


def test_patch_residual_is_zero_where_the_query_patch_appears_in_a_prompt_and_shared_prompts_broadcast():
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randn(1, 2, 10, 8, generator=gen)  # shared: [1, L, K*P, W]
    query = torch.randn(3, 2, 5, 8, generator=gen)
    query[1, :, 2] = 3.0 * prompts[0, :, 7]  # same direction, other norm
    maps = patch_residual_maps(query, prompts)  # [3, L, P]
    assert maps[1, :, 2].abs().max() < 1e-6
    torch.testing.assert_close(maps, patch_residual_maps(query, prompts.expand(3, -1, -1, -1)))


def test_image_residual_is_mean_of_adapted_shots_minus_adapted_query(model):
    query, shots = torch.randn(2, 640), torch.randn(2, 3, 640)
    with torch.no_grad():
        expected = torch.stack([model.adapter(shots[i]).mean(0) - model.adapter(query[i]) for i in range(2)])
        torch.testing.assert_close(image_residual(model.adapter, query, shots), expected)


def test_focal_loss_on_scores_applies_the_sigmoid_a_second_time():
    scores, labels = torch.tensor([0.2, 0.9, 0.6]), torch.tensor([0, 1, 1])
    p = torch.sigmoid(scores)  # the official double sigmoid
    pt = torch.where(labels.bool(), p, 1 - p)
    expected = ((1 - pt) ** 2 * -torch.log(pt)).mean()
    torch.testing.assert_close(focal_loss_on_scores(scores, labels), expected)


# --- forward ---------------------------------------------------------------------------


def test_forward_shapes(model, queries, prompts):
    with torch.no_grad():
        out = model(queries, prompts, "bottle")
    for name in ("final_score", "image_residual_score", "text_score", "holistic_score", "fine_grained_score"):
        assert getattr(out, name).shape == (3,), name
    assert out.patch_map.shape == out.holistic_map.shape == (3, 225)
    assert out.layer_patch_maps.shape == (3, 3, 225)
    torch.testing.assert_close(out.final_score, (out.holistic_score + out.fine_grained_score) / 2)
    torch.testing.assert_close(out.fine_grained_score, out.patch_map.amax(dim=1))
    torch.testing.assert_close(out.holistic_map, out.patch_map + (out.text_score + out.image_residual_score)[:, None])


def test_each_query_gets_the_result_it_would_get_alone(model, queries):
    per_query_prompts = images(3 * 2, seed=3).reshape(3, 2, 3, SIZE, SIZE)  # [B, K, 3, S, S]
    names = ["bottle", "screw", "pill"]
    with torch.no_grad():
        batched = model(queries, per_query_prompts, names)
        alone = [model(queries[i:i + 1], per_query_prompts[i], names[i]) for i in range(3)]
    for field in ("final_score", "image_residual_score", "text_score", "patch_map", "holistic_map"):
        torch.testing.assert_close(getattr(batched, field), torch.cat([getattr(o, field) for o in alone]),
                                   atol=2e-6, rtol=1e-5, msg=field)


def test_one_class_name_means_the_same_class_for_every_query(model, queries, prompts):
    with torch.no_grad():
        one = model(queries, prompts, "bottle").final_score
        many = model(queries, prompts, ["bottle"] * 3).final_score
    torch.testing.assert_close(one, many)


def test_shared_prompts_are_encoded_once_per_call(model, queries, prompts):
    counter = ImageCounter(model)
    try:
        with torch.no_grad():
            model(queries, prompts, "bottle")
    finally:
        counter.handle.remove()
    assert counter.count == len(queries) + len(prompts)


def test_prompt_features_computed_once_can_serve_many_batches(model, queries, prompts):
    features = model.prompt_features(prompts)  # e.g. a class's fixed evaluation prompt set
    counter = ImageCounter(model)
    try:
        with torch.no_grad():
            reused = model(queries, features, "bottle")
    finally:
        counter.handle.remove()
    assert counter.count == len(queries)
    with torch.no_grad():
        torch.testing.assert_close(reused.final_score, model(queries, prompts, "bottle").final_score)


def test_text_prior_is_encoded_once_per_class_name(queries, prompts):
    model = make_model().eval()
    calls = []
    handle = model.clip.token_embedding.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            model(queries, prompts, "bottle")
            first = len(calls)
            model(queries, prompts, ["bottle", "bottle", "bottle"])
            assert len(calls) == first  # cached
            model(queries, prompts, ["bottle", "screw", "bottle"])
            assert len(calls) > first  # a new class is encoded
    finally:
        handle.remove()
    assert model.text_features("bottle") is model.text_features("bottle")
    assert not model.text_features("bottle").requires_grad


def test_cached_text_features_follow_the_model_to_another_device():
    model = make_model()
    model.text_features("bottle")
    model.to("meta")  # no real second device needed: "meta" tensors carry only shapes
    calls = []
    handle = model.clip.token_embedding.register_forward_hook(lambda *args: calls.append(1))
    try:
        assert model.text_features("bottle").device.type == "meta" and not calls  # moved, not re-encoded
    finally:
        handle.remove()


def test_wrong_batch_compositions_are_refused(model, queries, prompts):
    with pytest.raises(ValueError, match="class names"):
        model(queries, prompts, ["bottle", "screw"])
    with pytest.raises(ValueError, match="224 px"):
        model(queries[..., :224, :224], prompts, "bottle")
    with pytest.raises(ValueError, match="prompts"):
        model(queries, prompts[None].expand(2, -1, -1, -1, -1), "bottle")  # [2, K, ...] for 3 queries


# --- training --------------------------------------------------------------------------


def test_loss_trains_only_the_adapter_and_heads(queries, prompts):
    model = make_model().train()
    out = model(queries, prompts, "bottle")
    assert not out.fine_grained_score.requires_grad and not out.text_score.requires_grad
    model.loss(out, torch.tensor([0, 1, 1])).backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None}
    assert grads and all(name.startswith(HEADS) for name in grads)
    assert not any(".bn1." in name for name in grads)  # bn1 is never applied


def test_train_step_returns_the_losses_and_moves_the_trainable_weights(queries, prompts):
    model = make_model()
    optimizer = make_optimizer(model)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-3, 0.01, (0.9, 0.999), 1e-8)
    before = {k: v.clone() for k, v in official_state_dict(model).items()}
    losses = train_step(model, optimizer, batch(queries, prompts), recipe=inctrl.RECIPE)
    assert set(losses) == {"total", "loss_final", "loss_image_residual"}  # the trainer's history keys
    assert losses["total"] == pytest.approx(losses["loss_final"] + losses["loss_image_residual"], rel=1e-6)
    after = official_state_dict(model)
    assert not torch.equal(after["adapter.fc.0.weight"], before["adapter.fc.0.weight"])
    assert not torch.equal(after["diff_head.bn2.running_mean"], before["diff_head.bn2.running_mean"])
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith(HEADS))


# --- state dicts and checkpoints ---------------------------------------------------------


def test_official_state_dict_uses_official_names(model):
    keys = set(official_state_dict(model))
    assert "visual.conv1.weight" in keys and "token_embedding.weight" in keys
    assert "logit_scale" not in keys and not any(k.startswith("clip.") for k in keys)


def test_official_state_dict_round_trip_through_numpy_fp16():
    source, target = make_model(seed=0).eval(), make_model(seed=1).eval()
    state = {k: v.numpy().astype(np.float16) if v.is_floating_point() else v.numpy()
             for k, v in official_state_dict(source).items()}
    load_official_state_dict(target, state)
    expected = {k: torch.from_numpy(v.astype(np.float32)) if v.dtype == np.float16 else torch.from_numpy(v)
                for k, v in state.items()}
    loaded = official_state_dict(target)
    assert all(loaded[k].dtype == torch.float32 for k in loaded if loaded[k].is_floating_point())
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_loading_names_missing_and_unexpected_keys(model):
    state = dict(official_state_dict(model))
    del state["diff_head.bn1.weight"]
    state["diff_head.extra"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys \['diff_head.bn1.weight'\].*unexpected keys \['diff_head.extra'\]"):
        load_official_state_dict(make_model(), state)


def test_loading_clears_the_text_cache():
    model = make_model()
    stale = model.text_features("bottle")
    load_official_state_dict(model, official_state_dict(make_model(seed=1)))
    assert not torch.equal(model.text_features("bottle"), stale)


def test_checkpoint_round_trip_in_official_format(tmp_path, queries, prompts):
    source = make_model(seed=0)
    train_step(source, make_optimizer(source), batch(queries, prompts), recipe=inctrl.RECIPE)
    path = save_checkpoint(source, tmp_path / "inctrl.pyth", epoch=3)
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 3 and set(saved["model_state"]) == set(official_state_dict(source))
    target = load_checkpoint(make_model(seed=1), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(target(queries, prompts, "bottle").final_score,
                                   source.eval()(queries, prompts, "bottle").final_score)
    bare = {f"module.{k}": v for k, v in official_state_dict(source).items()}  # bare, multi-GPU names
    torch.save(bare, tmp_path / "bare.pt")
    load_checkpoint(make_model(seed=1), tmp_path / "bare.pt")


# --- text prompts (zsadlab/prompts.py, InCTRL section) ------------------------------------


def test_prompt_texts_are_7_normal_and_4_anomaly_states_times_22_templates_state_major():
    normal, anomaly = inctrl_prompt_texts("metal_nut")
    assert len(normal) == 154 and len(anomaly) == 88
    assert all("metal nut" in s for s in normal + anomaly)
    first_state = NORMAL_STATES[0].format("metal nut")
    assert all(first_state in s and "flawless" not in s for s in normal[:22])
    assert all("flawless metal nut" in s for s in normal[22:44])
    assert all("damaged metal nut" in s for s in anomaly[:22])


def test_semantic_classes_get_a_single_prompt_each():
    assert inctrl_prompt_texts("dog") == (["a photo of dog for anomaly detection."],
                                          ["a photo without dog for anomaly detection."])
