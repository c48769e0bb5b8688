"""The two halves of the notebook regression ignore float noise and catch real changes:
sanitize.cfg masks every float in the text nbval compares, result_tables compares the numbers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from nbval.plugin import get_sanitize_patterns
from result_tables import ATOL, mismatches

SANITIZE = Path(__file__).resolve().parent / "sanitize.cfg"

TABLE = "class,image_auroc,pixel_auroc\nbottle,0.8123456,0.61\ncable,0.5,nan\nmean,0.6561728,0.61\n"


def sanitized(text: str) -> str:
    for regex, replace in get_sanitize_patterns(SANITIZE.read_text()):
        text = re.sub(regex, replace, text)
    return text


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_masked_text_ignores_the_last_digit_and_column_width():
    assert sanitized("k=2: image AUROC [0.46, 0.32]\n  mean   99.9") == sanitized("k=2: image AUROC [0.46, 0.33]\n  mean  100.0")


@pytest.mark.parametrize("changed", ["k=4: image AUROC [0.46, 0.32]", "k=2: pixel AUROC [0.46, 0.32]",
                                     "k=2: image AUROC [0.46, 0.32, 0.1]", "k=2: image AUROC [0.46, 3]"])
def test_masked_text_still_sees_words_integers_and_shapes(changed):
    assert sanitized("k=2: image AUROC [0.46, 0.32]") != sanitized(changed)


def test_a_change_of_the_last_printed_digit_matches(tmp_path):
    reference = write(tmp_path, "ref.csv", TABLE)
    nudged = TABLE.replace("0.8123456", f"{0.8123456 + ATOL / 2:.7f}")
    assert mismatches(write(tmp_path, "new.csv", nudged), reference) == []


@pytest.mark.parametrize("old,new", [("0.8123456", "0.7123456"), ("nan", "0.5"), ("cable", "carpet"),
                                     ("pixel_auroc", "pixel_ap"), ("mean,", "extra,0.1,0.1\nmean,")])
def test_a_changed_number_label_column_or_row_fails(tmp_path, old, new):
    reference = write(tmp_path, "ref.csv", TABLE)
    assert mismatches(write(tmp_path, "new.csv", TABLE.replace(old, new, 1)), reference)


def test_json_tables_compare_keys_exactly_and_numbers_with_the_tolerance(tmp_path):
    table = {"V-V": {"image_auroc": 0.75, "per_seed": [0.5, float("nan")]}}
    reference = write(tmp_path, "ref.json", json.dumps(table))
    table["V-V"]["image_auroc"] += ATOL / 2
    assert mismatches(write(tmp_path, "near.json", json.dumps(table)), reference) == []
    table["V-V"]["per_seed"].append(0.1)
    assert mismatches(write(tmp_path, "longer.json", json.dumps(table)), reference)
    assert mismatches(write(tmp_path, "renamed.json", json.dumps({"Q-Q": table["V-V"]})), reference)


def test_tables_in_percent_get_a_percent_sized_tolerance_and_name_existing_references():
    from result_tables import PERCENT, PERCENT_TABLES, REFERENCES, table_atol

    assert table_atol("02_dpam", "dpam_ablation.json") == ATOL * PERCENT >= 1.1e-4 * 10  # the measured CPU spread
    assert table_atol("05_training_on_gpu", "x.csv") == ATOL
    assert all((REFERENCES / table).is_file() for table in PERCENT_TABLES)
