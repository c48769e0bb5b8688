"""zsadlab.run_notebooks: parameters, baseline sanitising and timing records (no kernel started)."""
from __future__ import annotations

import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from zsadlab import run_notebooks as rn


def test_parameters_keep_relative_output_dirs():
    params = rn.notebook_parameters("01_x", "smoke", "figures", {"seed": 1})
    assert params == {"profile": "smoke", "output_dir": "figures/01_x", "seed": 1}


def test_sanitised_baseline_drops_images_and_keeps_text():
    cell = new_code_cell("plot()")
    cell.outputs = [
        new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure size 10x10 with 1 Axes>"},
                   metadata={"needs_background": "light"}),
        new_output("stream", name="stdout", text="auroc 0.91\n"),
    ]
    cell.metadata["papermill"] = {"duration": 1.0}
    nb = new_notebook(cells=[cell], metadata={"papermill": {"start_time": "now"}})
    clean = rn.sanitise_baseline(nb)
    out = clean.cells[0].outputs
    assert "image/png" not in out[0]["data"] and out[0]["data"]["text/plain"].startswith("<Figure")
    assert out[1]["text"] == "auroc 0.91\n"
    assert "papermill" not in clean.metadata and "papermill" not in clean.cells[0].metadata
    assert "image/png" in nb.cells[0].outputs[0]["data"], "the input notebook must not be modified"
    nbformat.validate(clean)


def test_timings_merge_with_earlier_runs(tmp_path):
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"profile": "smoke", "seconds": {"a": 1.0, "b": 2.0}, "failed": ["b"]}))
    merged = rn._merged({"profile": "smoke", "seconds": {"b": 3.0}, "failed": []}, path)
    assert merged["seconds"] == {"a": 1.0, "b": 3.0} and merged["failed"] == [] and merged["total_seconds"] == 4.0
    other = rn._merged({"profile": "full", "seconds": {"b": 3.0}, "failed": []}, path)
    assert other["seconds"] == {"b": 3.0}


def test_missing_notebook_is_a_usage_error(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        rn.main([str(tmp_path / "nope.ipynb")])
    assert "no such notebook" in capsys.readouterr().err


def test_result_tables_replace_the_earlier_ones_and_nothing_else_is_copied(tmp_path):
    made = tmp_path / "output_dir"
    for name in ("table.csv", "table.json", "figure.png"):
        (made / name).parent.mkdir(parents=True, exist_ok=True)
        (made / name).write_text(name)
    references = tmp_path / "references"
    references.mkdir()
    (references / "renamed.csv").write_text("old")
    (references / "README.txt").write_text("kept")
    copies = rn.copy_results(made, references)
    assert [p.name for p in copies] == ["table.csv", "table.json"]
    assert sorted(p.name for p in references.iterdir()) == ["README.txt", "table.csv", "table.json"]
    assert (references / "table.json").read_text() == "table.json"


def test_kernels_get_curve_keys_when_zmq_can_encrypt():
    import zmq

    manager = rn.encrypted_kernel_manager()(kernel_name="python3")
    assert manager.transport_encryption == ("auto" if zmq.has("curve") else "disabled")


def test_the_trainings_summary_names_a_training_that_ran_twice():
    from zsadlab.run_notebooks import trainings_summary

    once = [{"notebook": "02", "key": "a", "action": "trained"}, {"notebook": "03", "key": "a", "action": "reused"}]
    assert trainings_summary(once) == "trainings: 1 trained, 1 reused, 0 pulled; no training ran twice"
    twice = once + [{"notebook": "04", "key": "a", "action": "trained"}]
    assert "TRAINED MORE THAN ONCE: a" in trainings_summary(twice)
