"""MuSc beyond the fixtures: chunked mutual scoring equals one big computation, its working memory
does not grow with the number of images, memory-mapped tokens, and clear errors for too few images."""
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from zsadlab.backbone import tiny_clip
from zsadlab.errors import InputError
from zsadlab.musc import MuSc, MuScConfig, interval_bounds, lnamd, mutual_scoring, rscin

P, C = 49, 16  # a 7 x 7 patch grid, 16 channels


def random_features(n, seed=0):
    z = torch.randn(n, P, C, generator=torch.Generator().manual_seed(seed))
    return z / z.norm(dim=-1, keepdim=True)  # [n, P, C], as LNAMD gives them


def one_big_mutual_scoring(z, topmin_max=0.3):
    """The definition in one piece: every patch against every patch of every image, [N, P, N, P]."""
    n = len(z)
    d = torch.cdist(z.reshape(n * P, C), z.reshape(n * P, C)).view(n, P, n, P).amin(-1)  # [N, P, N]
    d[torch.arange(n), :, torch.arange(n)] = float("inf")
    k = int((n - 1) * topmin_max)
    return d.sort(-1).values[..., :k].mean(-1).double()


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any torch operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 17])
def test_chunked_mutual_scoring_equals_one_big_computation(chunk_size):
    z = random_features(17)
    torch.testing.assert_close(mutual_scoring(z, chunk_size=chunk_size), one_big_mutual_scoring(z),
                               rtol=0, atol=2e-6)


def test_the_largest_intermediate_is_one_chunk_pair_block_whatever_the_number_of_images():
    largest = {}
    for n in (8, 32):
        z = random_features(n)
        with LargestTensor() as probe:
            mutual_scoring(z, chunk_size=4)
        largest[n] = probe.largest
    assert largest[8] == largest[32] == (4 * P) ** 2  # one [4P, 4P] block, never [N*P, N*P]
    with LargestTensor() as probe:
        one_big_mutual_scoring(random_features(32))
    assert probe.largest == (32 * P) ** 2


def test_memory_mapped_tokens_give_the_same_scores_as_tokens_in_memory(tmp_path):
    model = MuSc(tiny_clip("anomalyclip"), MuScConfig(feature_layers=(1, 7), r_list=(1, 3), image_size=112))
    images = torch.randn(6, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    cls, tokens = model.extract(images)
    np.save(tmp_path / "tokens.npy", tokens.numpy())
    mapped = np.load(tmp_path / "tokens.npy", mmap_mode="r")
    in_memory = model.score_tokens(cls.numpy(), tokens)
    from_disk = model.score_tokens(cls.numpy(), mapped)
    np.testing.assert_allclose(from_disk[0], in_memory[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(from_disk[1], in_memory[1], rtol=0, atol=1e-7)
    assert in_memory[1].shape == (6, 112, 112) and np.isfinite(in_memory[0]).all()


def test_score_set_outputs_are_in_input_order_whatever_the_subsets():
    model = MuSc(tiny_clip("anomalyclip"), MuScConfig(feature_layers=(1, 7), r_list=(1,), image_size=112))
    images = torch.randn(10, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    scores, maps = model.score_set(images, subsets=[[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]])
    swapped, swapped_maps = model.score_set(images, subsets=[[9, 7, 5, 3, 1], [8, 6, 4, 2, 0]])
    np.testing.assert_allclose(scores, swapped, atol=1e-5)
    torch.testing.assert_close(maps, swapped_maps, rtol=0, atol=1e-5)


def test_fewer_images_than_the_interval_needs_is_one_clear_error():
    model = MuSc(tiny_clip("anomalyclip"), MuScConfig(feature_layers=(7,), image_size=112))
    assert model.min_images == 5
    with pytest.raises(InputError, match="at least 5 images"):
        model.score_set(torch.randn(4, 3, 112, 112))
    with pytest.raises(InputError, match="exactly once"):
        model.score_set(torch.randn(10, 3, 112, 112), subsets=[[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]])


def test_interval_bounds_are_a_rounded_down_fraction_of_the_other_images_or_a_count():
    assert interval_bounds(9, 0.0, 0.3) == (0, 2)
    assert interval_bounds(9, 0.2, 0.6) == (1, 5)
    assert interval_bounds(3, 0.0, 0.3) == (0, 0)  # 4 images: NaN officially
    assert interval_bounds(4, 0.0, 0.3) == (0, 1)
    assert interval_bounds(199, 1, 0.3) == (1, 59)


def test_a_mutual_score_is_the_mean_distance_to_the_nearest_images_with_a_known_answer():
    # image 3 is image 0 shifted by one patch except one patch, which nothing else resembles
    base = random_features(1)[0]
    z = torch.stack([base.roll(s, dims=0) for s in range(5)])
    odd = torch.zeros(C)
    odd[0] = 1.0
    z[3, 10] = odd
    scores = mutual_scoring(z)  # k = int(0.3 * 4) = 1: the nearest other image
    assert torch.allclose(scores[0], torch.zeros(P, dtype=torch.float64), atol=1e-3)
    assert scores[3, 10] == scores.max()


def test_lnamd_features_are_unit_vectors_per_patch_and_layer():
    tokens = torch.randn(2, 3, 1 + P, C)
    z = lnamd(tokens, 3)
    assert z.shape == (3, P, 2, C)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3, P, 2), rtol=0, atol=1e-6)


def test_rscin_with_k_one_is_the_min_max_normalised_score():
    scores = np.array([2.0, 4.0, 3.0])
    cls = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(rscin(scores, cls, k_list=(1,)), [0.0, 1.0, 0.5])


def test_even_neighbourhood_sizes_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        MuScConfig(r_list=(1, 2))


def test_feature_layers_count_from_zero_as_the_official_config():
    assert MuScConfig().blocks == (6, 12, 18, 24)


def test_the_evaluation_uses_the_official_rscin_neighbourhoods_of_the_test_set_1_8_9_on_visa(marked_toy_set,
                                                                                           monkeypatch):
    import numpy as np

    from zsadlab import engine, musc
    from zsadlab.profiles import get_profile

    seen = []
    monkeypatch.setattr(musc, "rscin", lambda scores, cls, k_list: seen.append(tuple(k_list)) or np.zeros(len(scores)))
    for name in ("visa", "mvtec"):  # the same toy images, marked as either registry dataset
        model = engine.build_model("musc", get_profile("smoke", quiet=True), "cpu")
        engine.evaluate(model, marked_toy_set(name), progress=False)
        assert model.config.k_list == (1, 2, 3)  # the model's own config again after the evaluation
    assert seen == [(1, 8, 9), (1, 8, 9), (1, 2, 3), (1, 2, 3)]  # two classes each (musc.py:242-247)
