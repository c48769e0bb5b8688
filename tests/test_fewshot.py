"""Few-shot sample prompts (zsadlab/fewshot.py): seeded, same class, normal only, never the query."""
import json

import numpy as np
import pytest

from zsadlab.engine import load_or_sample_prompt_set, prompt_set_path
from zsadlab.fewshot import (
    WITH_REPLACEMENT,
    balanced_batches,
    normal_indices_by_class,
    reference_seed,
    sample_prompt_indices,
    sample_prompt_paths,
)

#            0         1         2         3         4        5        6        7        8
CLASSES = ["bottle", "bottle", "bottle", "bottle", "screw", "screw", "screw", "bottle", "screw"]
LABELS = [0, 0, 0, 1, 0, 0, 0, 1, 1]


def test_normal_pools_per_class():
    pools = normal_indices_by_class(LABELS, CLASSES)
    assert pools["bottle"].tolist() == [0, 1, 2] and pools["screw"].tolist() == [4, 5, 6]


def test_training_prompts_are_other_normal_images_of_the_same_class():
    queries = list(range(len(CLASSES)))
    for seed in range(20):
        chosen = sample_prompt_indices(queries, LABELS, CLASSES, shots=2, rng=seed)
        assert chosen.shape == (len(queries), 2)
        for query, row in zip(queries, chosen):
            assert query not in row and len(set(row)) == 2
            assert all(LABELS[i] == 0 and CLASSES[i] == CLASSES[query] for i in row)


def test_training_prompts_are_reproducible_from_the_seed_and_vary_with_a_shared_generator():
    queries = [3, 7, 8]
    same = [sample_prompt_indices(queries, LABELS, CLASSES, 2, rng=5) for _ in range(2)]
    assert np.array_equal(*same)
    rng = np.random.default_rng(0)
    draws = {tuple(sample_prompt_indices(queries, LABELS, CLASSES, 2, rng).ravel()) for _ in range(20)}
    assert len(draws) > 1


def test_too_few_normal_images_is_an_error_naming_the_class():
    with pytest.raises(ValueError, match="'bottle'"):
        sample_prompt_indices([0], LABELS, CLASSES, shots=3, rng=0)  # only 1 and 2 remain


def test_evaluation_prompts_depend_on_the_set_of_paths_and_the_seed_only():
    paths = [f"good/{i:03d}.png" for i in range(10)]
    picked = sample_prompt_paths(paths, 4, seed=1)
    assert len(set(picked)) == 4 and set(picked) <= set(paths)
    assert sample_prompt_paths(paths[::-1], 4, seed=1) == picked
    assert sample_prompt_paths(paths, 4, seed=2) != picked


def test_evaluation_prompt_set_is_saved_once_and_reused(tmp_path):
    paths = [f"good/{i:03d}.png" for i in range(10)]
    first = load_or_sample_prompt_set(tmp_path, "visa", "pcb1", 4, 0, paths)
    file = prompt_set_path(tmp_path, "visa", "pcb1", 4, 0)
    saved = json.loads(file.read_text())
    assert saved == {"dataset": "visa", "class_name": "pcb1", "shots": 4, "seed": 0, "draw": "without_replacement",
                     "paths": first}
    assert load_or_sample_prompt_set(tmp_path, "visa", "pcb1", 4, 0, []) == first  # candidates not needed


def test_a_prompt_set_file_that_does_not_match_its_key_is_refused(tmp_path):
    file = prompt_set_path(tmp_path, "visa", "pcb1", 2, 0)
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps({"dataset": "visa", "class_name": "pcb1", "shots": 4, "seed": 0, "paths": ["a"] * 4}))
    with pytest.raises(ValueError, match="resample"):
        load_or_sample_prompt_set(tmp_path, "visa", "pcb1", 2, 0, ["x", "y"])


def test_vand_references_are_the_official_draw_with_replacement_seeded_per_class_k_and_seed():
    import torch

    paths = [f"train/good/{i:03d}.png" for i in range(5)]
    picked = sample_prompt_paths(paths[::-1], 8, seed=42, draw=WITH_REPLACEMENT, class_name="bottle")
    # the official rule (VAND dataset.py, mode='train'): torch.randint(0, len(items), (k_shot,)) over the class's items
    generator = torch.Generator().manual_seed(reference_seed("bottle", 8, 42))
    assert picked == [paths[i] for i in torch.randint(0, 5, (8,), generator=generator).tolist()]
    assert len(set(picked)) < 8  # 8 draws from 5 images: with replacement, a repeat is certain
    assert sample_prompt_paths(paths, 8, 42, WITH_REPLACEMENT, "bottle") == picked  # a function of (class, k, seed)
    others = [sample_prompt_paths(paths, 8, 42, WITH_REPLACEMENT, "screw"),
              sample_prompt_paths(paths, 8, 43, WITH_REPLACEMENT, "bottle")]
    assert all(other != picked for other in others)
    assert sample_prompt_paths(paths[:1], 4, 0, WITH_REPLACEMENT, "bottle") == [paths[0]] * 4  # fewer images than k


def test_a_prompt_set_drawn_by_the_other_rule_is_never_reused(tmp_path):
    paths = [f"good/{i:03d}.png" for i in range(10)]
    distinct = load_or_sample_prompt_set(tmp_path, "visa", "pcb1", 4, 0, paths)
    repeated = load_or_sample_prompt_set(tmp_path, "visa", "pcb1", 4, 0, paths, draw=WITH_REPLACEMENT)
    assert prompt_set_path(tmp_path, "visa", "pcb1", 4, 0, WITH_REPLACEMENT) != prompt_set_path(tmp_path, "visa", "pcb1", 4, 0)
    assert json.loads(prompt_set_path(tmp_path, "visa", "pcb1", 4, 0, WITH_REPLACEMENT).read_text())["draw"] == WITH_REPLACEMENT
    assert repeated == sample_prompt_paths(paths, 4, 0, WITH_REPLACEMENT, "pcb1") and distinct == sample_prompt_paths(paths, 4, 0)
    wrong = prompt_set_path(tmp_path, "visa", "pcb2", 4, 0, WITH_REPLACEMENT)  # a file claiming the other rule
    wrong.write_text(json.dumps({"dataset": "visa", "class_name": "pcb2", "shots": 4, "seed": 0,
                                 "draw": "without_replacement", "paths": paths[:4]}))
    with pytest.raises(ValueError, match="resample"):
        load_or_sample_prompt_set(tmp_path, "visa", "pcb2", 4, 0, paths, draw=WITH_REPLACEMENT)
    old = prompt_set_path(tmp_path, "visa", "pcb3", 2, 0)  # written before the rule was recorded: drawn without
    old.write_text(json.dumps({"dataset": "visa", "class_name": "pcb3", "shots": 2, "seed": 0, "paths": ["a", "b"]}))
    assert load_or_sample_prompt_set(tmp_path, "visa", "pcb3", 2, 0, []) == ["a", "b"]


def test_each_few_shot_method_declares_its_official_draw_rule():
    from zsadlab.methods import get_method

    assert get_method("vand_fewshot").with_prompts.draw == "with_replacement"
    assert get_method("inctrl").with_prompts.draw == get_method("winclip_plus").with_prompts.draw == "without_replacement"


def test_training_batches_are_half_normal_then_half_anomalous_and_cover_each_pool_before_repeating():
    batches = balanced_batches(LABELS, batch_size=4, steps=3, rng=0)
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    assert all([LABELS[i] for i in b] == [0, 0, 1, 1] for b in batches)
    normals = [i for b in batches for i in b[:2]]
    assert sorted(normals[:6]) == [0, 1, 2, 4, 5, 6]  # one full permutation of the 6 normals
    assert balanced_batches(LABELS, 4, 3, rng=0) == batches


def test_training_batches_need_both_labels():
    with pytest.raises(ValueError, match="anomalous"):
        balanced_batches([0, 0, 0], batch_size=2, steps=1, rng=0)
