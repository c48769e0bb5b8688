"""Calibration: the conformal threshold is the right order statistic, its false-alarm guarantee holds on
synthetic scores, too small an alpha is refused, and a calibration is applied only to the model it was made for."""
import csv
import types
from fractions import Fraction

import numpy as np
import pytest
import torch

from zsadlab import engine
from zsadlab.anomalyclip import save_official_checkpoint
from zsadlab.calibration import (
    Calibration,
    calibrate,
    conformal_rank,
    conformal_threshold,
    confusion,
    decision_costs,
    false_alarm_rates,
    normal_images_needed,
    random_splits,
    refusal,
)
from zsadlab.errors import InputError
from zsadlab.methods import get_method
from zsadlab.profiles import get_profile

SMOKE = get_profile("smoke", quiet=True)


# --- the threshold -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,alpha,rank", [(19, 0.1, 18), (19, 0.05, 19), (99, 0.01, 99), (10, 0.3, 8),
                                          (9, 0.3, 7), (20, 0.1, 19), (200, 0.01, 199)])
def test_the_threshold_is_the_order_statistic_of_rank_ceil_n_plus_1_times_1_minus_alpha(n, alpha, rank):
    scores = np.random.default_rng(n).permutation(np.arange(1, n + 1)) / 10  # k-th smallest is k / 10
    assert conformal_rank(n, alpha) == rank
    assert conformal_threshold(scores, alpha) == rank / 10


def test_the_rank_is_exact_where_floating_point_would_round_up():
    # 20 * (1 - 0.7) is 6.000000000000001 in floats, so a float ceil would take the 7th score
    assert 20 * (1 - 0.7) > 6 and conformal_rank(19, 0.7) == 6
    assert conformal_rank(9, Fraction(3, 10)) == 7 and conformal_rank(20, Fraction(1, 21)) == 20


def test_an_alpha_below_one_over_n_plus_one_is_refused_with_the_smallest_it_allows():
    with pytest.raises(ValueError, match=r"20 normal images allow α ≥ 1/\(n\+1\) = 1/21.*at least 99"):
        conformal_threshold(np.arange(20.0), 0.01)
    assert conformal_threshold(np.arange(20.0), Fraction(1, 21)) == 19.0  # exactly 1/(n+1): the maximum
    assert [normal_images_needed(a) for a in (0.1, 0.05, 0.01)] == [9, 19, 99]
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            conformal_threshold(np.arange(20.0), bad)


def test_scores_that_are_not_finite_are_refused():
    with pytest.raises(ValueError, match="finite"):
        conformal_threshold([0.1, float("nan"), 0.3], 0.5)


SYNTHETIC = {  # normal-score distributions: smooth, heavy-tailed, and with many ties
    "normal": lambda rng, shape: rng.normal(0.3, 0.05, shape),
    "exponential": lambda rng, shape: rng.exponential(1.0, shape),
    "ties": lambda rng, shape: rng.integers(0, 6, shape) / 5,
}
CASES = [(20, 0.1), (20, 0.05), (200, 0.1), (200, 0.05), (200, 0.01)]


@pytest.mark.parametrize("distribution", sorted(SYNTHETIC))
@pytest.mark.parametrize("n,alpha", CASES)
def test_the_false_alarm_rate_over_2000_random_splits_is_at_most_alpha_plus_3_standard_errors(n, alpha, distribution):
    rng = np.random.default_rng([n, int(alpha * 1000), len(distribution)])
    scores = SYNTHETIC[distribution](rng, (2000, n + 100))  # [R, N]: a fresh set of normal images per repeat
    rates = false_alarm_rates(scores[:, :n], scores[:, n:], alpha)  # [R]
    standard_error = rates.std(ddof=1) / np.sqrt(rates.size)
    assert rates.mean() <= alpha + 3 * standard_error


@pytest.mark.parametrize("n,alpha", CASES)
def test_random_splits_of_one_pool_of_normal_scores_keep_the_guarantee(n, alpha):
    pool = np.random.default_rng(1).gamma(2.0, 1.0, n + 100)
    calibration, evaluation = random_splits(pool, n, repeats=2000, seed=2)
    assert calibration.shape == (2000, n) and evaluation.shape == (2000, 100)
    assert np.array_equal(np.sort(np.concatenate([calibration[0], evaluation[0]])), np.sort(pool))
    rates = false_alarm_rates(calibration, evaluation, alpha)
    assert rates.mean() <= alpha + 3 * rates.std(ddof=1) / np.sqrt(rates.size)


# --- methods whose scores cannot be calibrated -----------------------------------------------------------------


def test_methods_with_test_set_normalised_scores_are_refused_with_the_reason():
    assert "normalised over the whole test set" in refusal(get_method("vand_fewshot"))
    transductive = types.SimpleNamespace(name="musc", transductive=True, class_scores=None)
    assert "transductive" in refusal(transductive)
    assert refusal(get_method("anomalyclip")) is None and refusal(get_method("inctrl")) is None


# --- calibrating and applying a model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_model():
    return engine.build_model("clip", SMOKE, device="cpu")


@pytest.fixture
def normals(tmp_path, write_image):
    for i in range(5):
        write_image(tmp_path / "normals" / f"n{i}.png", size=(40, 40))
    return tmp_path / "normals"


def rows_of(out):
    with (out / "scores.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_calibrate_records_what_the_thresholds_are_valid_for_and_round_trips_through_json(clip_model, normals,
                                                                                           tmp_path):
    record = calibrate(clip_model, normals, alpha=0.25, class_name="bottle")
    assert record.n == 5 and record.alpha == 0.25 and record.smallest_alpha == pytest.approx(1 / 6)
    assert record.method == "clip" and record.profile == "smoke" and record.class_name == "bottle"
    assert record.checkpoint_sha256 is None and record.prompts is None and record.config["image_size"] == 112
    assert record.pixel_threshold is not None and 0 <= record.pixel_fpr <= 1
    loaded = Calibration.load(record.save(tmp_path / "cal.json"))
    assert loaded == record and loaded.source == str(tmp_path / "cal.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="not a zsadlab calibration"):
        Calibration.load(tmp_path / "bad.json")


def test_the_image_threshold_is_the_conformal_threshold_of_the_normal_scores(clip_model, normals, tmp_path):
    record = calibrate(clip_model, normals, alpha=0.4)  # k = ceil(6 * 0.6) = 4 of 5
    engine.predict_images(clip_model, [normals], tmp_path / "plain")
    scores = [float(row["score"]) for row in rows_of(tmp_path / "plain")]
    assert record.image_threshold == pytest.approx(sorted(scores)[3], abs=1e-6)


def test_predicts_anomalous_column_agrees_with_the_threshold_at_full_precision(clip_model, normals, tmp_path,
                                                                             write_image):
    record = calibrate(clip_model, normals, alpha=0.5)  # the median: both decisions occur among the normals
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    engine.predict_images(clip_model, [normals, broken], out, calibration=record)
    rows = rows_of(out)
    scored = [row for row in rows if row["status"] == "ok"]
    assert list(rows[0]) == ["path", "score", "overlay", "status", "anomalous", "threshold"]
    assert all(float(row["threshold"]) == record.image_threshold for row in scored)
    assert all(row["anomalous"] == str(float(row["score"]) > float(row["threshold"])).lower() for row in scored)
    assert {row["anomalous"] for row in scored} == {"true", "false"}
    skipped = [row for row in rows if row["status"] != "ok"]
    assert len(skipped) == 1 and skipped[0]["anomalous"] == "" and skipped[0]["threshold"] == ""


def test_without_a_calibration_scores_csv_is_unchanged(clip_model, normals, tmp_path):
    engine.predict_images(clip_model, [normals], tmp_path / "out")
    rows = rows_of(tmp_path / "out")
    assert list(rows[0]) == ["path", "score", "overlay", "status"] and len(rows[0]["score"].split(".")[1]) == 6


def test_a_calibration_is_refused_for_another_method_config_class_or_checkpoint(normals, tmp_path):
    model = engine.build_model("anomalyclip", SMOKE, device="cpu")
    save_official_checkpoint(model, tmp_path / "a.pth")
    engine.load_checkpoint(model, tmp_path / "a.pth")
    record = calibrate(model, normals, alpha=0.25)
    record.check_model(model, "object")  # the calibrated model passes
    with torch.no_grad():
        model.prompt_learner.ctx_pos.add_(0.1)
    save_official_checkpoint(model, tmp_path / "b.pth")
    engine.load_checkpoint(model, tmp_path / "b.pth")
    with pytest.raises(InputError, match="another checkpoint"):
        engine.predict_images(model, [normals], tmp_path / "out", calibration=record)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(InputError, match="another anomalyclip config .*sigma"):
        record.check_model(engine.build_model("anomalyclip", SMOKE, device="cpu", sigma=2.0))
    with pytest.raises(InputError, match="method anomalyclip, not clip"):
        record.check_model(engine.build_model("clip", SMOKE, device="cpu"))
    engine.load_checkpoint(model, tmp_path / "a.pth")
    with pytest.raises(InputError, match="class 'object', not 'bottle'"):
        record.check_model(model, "bottle")


def test_calibrate_refuses_test_set_normalised_methods_and_too_few_images_before_any_compute(normals):
    vand = engine.build_model("vand_fewshot", SMOKE, device="cpu")
    with pytest.raises(InputError, match="cannot calibrate vand_fewshot: .*normalised"):
        calibrate(vand, normals, alpha=0.25, prompts=[normals])
    clip = engine.build_model("clip", SMOKE, device="cpu")
    with pytest.raises(ValueError, match="5 normal images allow"):
        calibrate(clip, normals, alpha=0.1)


def test_reference_images_of_a_few_shot_method_are_recorded_and_never_used_as_calibration_images(tmp_path,
                                                                                                   write_image):
    for i in range(3):
        write_image(tmp_path / "refs" / f"r{i}.png", size=(40, 40))
        write_image(tmp_path / "normals" / f"n{i}.png", size=(40, 40))
    model = engine.build_model("winclip_plus", SMOKE, device="cpu")
    with pytest.raises(InputError, match="include reference images"):
        calibrate(model, [tmp_path / "normals", tmp_path / "refs"], alpha=0.2, prompts=[tmp_path / "refs"])
    record = calibrate(model, tmp_path / "normals", alpha=0.25, prompts=[tmp_path / "refs"])
    assert [item["path"] for item in record.prompts] == sorted(str(p.resolve()) for p in (tmp_path / "refs").iterdir())
    with pytest.raises(InputError, match="other reference images"):
        record.check_model(model, "object", [tmp_path / "normals"])


def test_the_confusion_matrix_flags_a_score_equal_to_the_threshold_and_prices_each_error():
    scores, labels = np.array([0.1, 0.5, 0.7, 0.6, 0.9]), np.array([0, 0, 0, 1, 1])
    assert confusion(0.7, scores, labels).tolist() == [[2, 1], [1, 1]]  # 0.7 >= 0.7 is flagged
    row = decision_costs(0.7, scores, labels, cost_missed=10, cost_false_alarm=1)
    assert (row["false alarms (FP)"], row["missed defects (FN)"], row["cost"]) == (1, 1, 11)
    assert row["recall %"] == 50 and row["false-alarm rate %"] == pytest.approx(100 / 3)
