"""The exercises' answer key (zsadlab/answers.py) and how the notebooks use it: every check grades against a
computed answer kept out of the student's cell, predictions are asked before the notebook reveals them, and a
prediction about a full-profile run is recorded, not graded, in a smoke run."""
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from zsadlab import answers
from zsadlab.answers import expected
from zsadlab.musc import MuScConfig
from zsadlab.notebook import check

NOTEBOOKS = sorted((Path(answers.__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def cells(path):
    return nbformat.read(path, as_version=4).cells


def student_code(path) -> str:
    return "\n".join(c.source for c in cells(path) if c.cell_type == "code" and "solution" not in c.metadata.get("tags", []))


def check_calls(source: str) -> list[str]:
    """The text of every ``check(...)`` call in ``source`` (balanced parentheses)."""
    calls = []
    for match in re.finditer(r"(?<![\w.])check\(", source):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(source)):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            if depth == 0:
                break
        calls.append(source[match.start():end + 1])
    return calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_check_a_student_sees_grades_against_the_answer_key_not_a_value_in_plain_sight(path):
    for call in check_calls(student_code(path)):
        assert "expected(" in call, f"{path.name}: {call}"


def test_every_answer_the_notebooks_ask_for_is_in_the_key_and_every_key_is_asked_for():
    used = {key for path in NOTEBOOKS for key in re.findall(r'expected\("([\d.]+)"', student_code(path))}
    assert used == set(answers.ANSWERS)


def test_an_unknown_exercise_is_named_in_one_line():
    with pytest.raises(KeyError, match="no exercise '99.9'"):
        expected("99.9")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_prediction_is_asked_before_the_notebook_shows_its_answer(path):
    nb = cells(path)
    exercises = next((c.source for c in nb if "## Exercises" in c.source), "")
    asked_before = re.search(r"Predict\*\* \(answered before", exercises) is not None
    first_predict = next((i for i, c in enumerate(nb) if c.source.startswith("### Predict first")), None)
    assert asked_before == (first_predict is not None), path.name
    if first_predict is not None:
        reveals = [i for i, c in enumerate(nb) if c.cell_type == "code" and "viz." in c.source
                   or c.source.startswith("## Takeaway")]
        assert first_predict < min(reveals), path.name
        assert nb[first_predict + 1].source.split("=")[1].strip().startswith("None"), path.name  # the answer cell


def test_the_paper_answers_come_from_the_reference_table():
    assert expected("01.1", methods={"CLIP": "clip", "CLIP-AC": "clip_ac", "WinCLIP": "winclip"}) == "WinCLIP"
    assert expected("03.1") == {"w/o T2", "T2"}  # MVTec AD image AUROC 65.6 without T2 vs 90.4 without T3
    assert expected("06.1", methods={"AnomalyCLIP": "anomalyclip", "CoOp": "coop", "VAND": "vand",
                                     "WinCLIP": "winclip"}) == "CoOp"


def test_the_code_answers_are_the_official_intervals_and_sizes():
    assert expected("11.1", n=20, config=MuScConfig()) == 5  # int(0.3 * 19) smallest of the 19 distances
    assert expected("10.4", alpha=0.01) == 99
    assert np.allclose(expected("11.3", maxima=np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])


def test_a_prediction_about_a_full_profile_run_is_not_graded_against_a_smoke_run(capsys):
    results = {"fine-tuned (trainval)": {"pixel_auroc": 0.9}, "zero-shot, MVTec": {"pixel_auroc": 0.8}}
    assert expected("07.1", results=results, meaningful=True) == "above"
    assert expected("07.1", results=results, meaningful=False) is None
    assert not check("1. fine-tuned vs zero-shot", "above", expected("07.1", results=results, meaningful=False))
    out = capsys.readouterr().out
    assert "recorded" in out and "not graded" in out and "correct" not in out
    losses = {"global only": {"image_auroc": 0.8, "pixel_auroc": 0.7}, "local only": {"image_auroc": 0.6},
              "both (AnomalyCLIP)": {"image_auroc": 0.9, "pixel_auroc": 0.95}}
    assert expected("04.1", results=losses, meaningful=True) == "local only"
    assert expected("04.1", results=losses, meaningful=False) is None
    assert expected("04.3", results=losses) == pytest.approx(25.0)  # points of pixel AUROC


def test_the_false_alarm_direction_is_measured_on_the_run():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.5, 0.7, 0.9, 0.8, 0.95])
    normal_scores = np.linspace(0, 1, 101)
    assert expected("10.1", scores=scores, labels=labels, normal_scores=normal_scores, quantile=0.6, stricter=0.99) == "down"
    assert expected("10.1", scores=scores, labels=labels, normal_scores=normal_scores, quantile=0.95,
                    stricter=0.99) == "unchanged"


def test_an_array_answer_is_graded_value_by_value_within_the_tolerance():
    assert check("q", np.array([0.0, 0.5]), np.array([0.0, 0.5 + 1e-9]), tolerance=1e-6)
    assert check("q", torch.tensor([0.0, 0.5]), np.array([0.0, 0.5]), tolerance=1e-6)
    assert not check("q", 0.0, np.array([0.0, 0.5]), tolerance=1e-6)  # a scalar is not the array asked for
    assert not check("q", np.array([0.0]), np.array([0.0, 0.5]), tolerance=1e-6)
    assert not check("q", "five", 5)


def test_the_mean_defect_area_is_computed_from_the_data(synthetic_industrial_root):
    area = expected("00.1", root=synthetic_industrial_root)
    assert 0.5 < area < 10  # small defects: a few % of a defective image


def test_a_label_is_graded_regardless_of_case_and_blanks():
    assert check("q", " Local  only", "local only") and check("q", "coop", "CoOp")
    assert not check("q", "local", "local only") and not check("q", 5, "5")


def test_the_second_graded_parts_have_their_known_answers(synthetic_industrial_root):
    assert expected("01.1.2") == "higher"  # CLIP on MVTec AD: image AUROC 74.1 vs pixel 38.4 (Table 1)
    assert expected("07.4") == "aupro_anomalyclip"  # the paper's tables use the official 200-threshold AUPRO
    assert expected("00.1.2", root=synthetic_industrial_root) == "1-10%"
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8, 0.9]), np.array([0, 0, 1, 1, 0])
    assert expected("10.1.1", scores=scores, labels=labels) == "no"  # a higher threshold never adds false alarms
    assert expected("10.1.2", scores=scores, labels=labels) == "no"  # ... and never removes a miss


def test_a_label_is_graded_by_its_words_not_its_format_and_a_set_lists_every_accepted_answer():
    assert check("q", "Q-K", "Q-K (CLIP)") and check("q", "v-v (anomalyclip)", "V-V (AnomalyCLIP)")
    assert check("q", "1 - 10 %", "1-10%") and not check("q", "1-10", "1-10%")
    assert check("q", "T2", frozenset({"w/o T2", "T2"})) and not check("q", "T3", frozenset({"w/o T2", "T2"}))
