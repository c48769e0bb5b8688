"""The sourced table of published values (zsadlab/references.py, zsadlab/references.csv)."""
from __future__ import annotations

import collections
import dataclasses

import pytest

from zsadlab import references
from zsadlab.data.registry import names as dataset_names
from zsadlab.methods import method_names
from zsadlab.metrics import get_metric

# Methods the table may cite before (or without) an implementation registered here.
CITED_WITHOUT_IMPLEMENTATION = {"musc"}


def test_the_table_loads_as_records_with_the_public_attributes():
    records = references.load_references()
    assert len(records) > 100
    fields = {f.name for f in dataclasses.fields(records[0])}
    assert {"method", "dataset", "metric", "value", "source", "note"} <= fields
    assert all(isinstance(r.value, float) for r in records)


def test_every_record_names_a_source():
    assert all(r.source.strip() for r in references.load_references())


def test_every_name_is_a_registry_name():
    known_methods = set(method_names()) | CITED_WITHOUT_IMPLEMENTATION
    known_datasets = set(dataset_names())
    for r in references.load_references():
        assert r.method in known_methods, r
        assert r.dataset in known_datasets, r
        get_metric(r.metric)  # raises for an unknown metric


def test_values_are_percentages():
    assert all(0 < r.value <= 100 for r in references.load_references())


def test_no_two_records_share_method_dataset_metric_and_setting():
    keys = collections.Counter((r.method, r.dataset, r.metric, r.setting) for r in references.load_references())
    assert [k for k, n in keys.items() if n > 1] == []


def test_lookup_returns_the_published_value_or_none():
    assert references.lookup("anomalyclip", "visa", "pixel_auroc").value == pytest.approx(95.5)
    assert references.lookup("coop", "mvtec", "pixel_auroc").value == pytest.approx(33.3)
    assert references.lookup("anomalyclip", "visa", "image_auroc", setting="ablation:no_dpam").value == pytest.approx(73.0)
    assert references.lookup("anomalyclip", "visa", "pixel_auroc", setting="ablation:local_only") is None


def test_values_builds_the_reference_series_of_a_bar_figure():
    series = references.values(["anomalyclip", "coop"], "mvtec", ["image_auroc", "pixel_auroc"])
    assert series == {"anomalyclip, paper": {"image_auroc": 91.5, "pixel_auroc": 91.1},
                      "coop, paper": {"image_auroc": 88.8, "pixel_auroc": 33.3}}
    assert references.values("inctrl", "mvtec", ["pixel_auroc"]) == {}  # nobody reports it: no series


def test_table_says_not_reported_where_no_record_exists():
    rows = references.table(references.find(dataset="headct", setting="zero_shot"), ["image_auroc", "pixel_auroc"])
    assert rows["headct | anomalyclip"] == {"image_auroc": "93.4", "pixel_auroc": references.NOT_REPORTED}


def test_musc_rows_are_in_the_table():
    assert references.lookup("musc", "mvtec", "aupro_mvtec").value == pytest.approx(93.8)
    assert references.lookup("musc", "visa", "image_auroc", setting="default_config").value == pytest.approx(92.57)


def test_inctrl_k_shot_rows_cover_two_four_and_eight_shots():
    assert [references.lookup("inctrl", "visa", "image_auroc", f"shots={k}").value for k in (2, 4, 8)] == [85.8, 87.7, 88.7]


# --- the notebooks draw every published value from the table ------------------------------------------------------
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import nbformat  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
ANSWER_KEY = re.compile(r'expected\("[\d.]+"')  # zsadlab.answers.expected("NN.k", ...)
NUMBER = re.compile(r"(?<![\w.])\d{2,3}\.\d{1,2}(?![\w.])")  # 74.1, 13.71: the shape of a published percentage
# Timings quoted in the cost statements (minutes per epoch, frames per second): not metrics, so not in the table.
TIMINGS = {13.71, 13.7, 12.25, 12.3, 13.2}
# The notebooks that compare with published values (the others show none).
COMPARING = ("01_", "02_", "03_", "04_", "05_", "06_", "07_", "08_")


def _cells(path):
    return [(cell.cell_type, cell.metadata.get("tags", []), cell.source) for cell in nbformat.read(path, as_version=4).cells]


def _published() -> set[float]:
    return {round(r.value, 1) for r in references.load_references()} | {round(r.value, 2) for r in references.load_references()}


def test_notebook_code_never_hard_codes_a_published_value():
    published = _published()
    for path in NOTEBOOKS:
        for kind, tags, source in _cells(path):
            if kind != "code" or "parameters" in tags or "solution" in tags:
                continue
            code = ANSWER_KEY.sub("expected(", source)  # an exercise key such as "07.1" is a name, not a value
            literals = [float(m) for m in NUMBER.findall(code)]
            assert not [v for v in literals if v in published], f"{path.name}: a published value typed into code"


def test_every_percentage_a_notebook_states_is_in_the_reference_table():
    published = _published()
    for path in NOTEBOOKS:
        for kind, _, source in _cells(path):
            if kind == "markdown":
                stray = [m for m in NUMBER.findall(source) if float(m) not in published | TIMINGS]
                assert not stray, f"{path.name}: {stray} stated in the text but not in zsadlab/references.csv"


def test_notebooks_that_compare_with_papers_read_the_table_and_label_smoke_runs():
    for path in NOTEBOOKS:
        code = "\n".join(source for kind, _, source in _cells(path) if kind == "code")
        if path.name.startswith(COMPARING):
            assert "references." in code, f"{path.name} shows published values without zsadlab.references"
        assert not re.search(r"plot_bars\((?:[^()]|\([^()]*\))*reference=", code), f"{path.name}: use plot_comparison"
        for call in re.findall(r"plot_(?:comparison|k_shot)\((?:[^()]|\([^()]*\))*\)", code, flags=re.S):
            assert "smoke=S.smoke" in call, f"{path.name}: a comparison figure that does not mark smoke runs"
