"""zsadlab.viz: every helper returns a Figure with a title and labelled axes; maps get colourbars."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from zsadlab import viz  # noqa: E402

S = 28


def _image():
    return torch.randn(3, S, S)


def _mask():
    m = np.zeros((S, S))
    m[10:16, 12:18] = 1
    return m


def _has_title(fig) -> bool:
    return bool(fig._suptitle and fig._suptitle.get_text()) or any(ax.get_title() for ax in fig.axes)


def _labelled(fig) -> bool:
    plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    return all(ax.get_xlabel() or ax.get_ylabel() for ax in plots[:1])


def _colourbars(fig) -> int:
    return sum(ax.get_label() == "<colorbar>" for ax in fig.axes)


@pytest.fixture(autouse=True)
def _close():
    viz.set_style()
    yield
    plt.close("all")


FIGURES = {
    "overlay": lambda: viz.plot_overlay(_image(), np.random.rand(S, S), mask=_mask(), score=0.5),
    "samples": lambda: viz.plot_sample_grid([_image(), _image()], [None, _mask()], ["a", "b"]),
    "map_grid": lambda: viz.plot_map_grid([_image(), _image()], {"m": [np.random.rand(S, S)] * 2}, masks=[None, _mask()]),
    "attention": lambda: viz.plot_attention({"QK": torch.softmax(torch.randn(1, 17, 17), -1)}),
    "attention_rows": lambda: viz.plot_attention_rows(_image(), {"QK": torch.softmax(torch.randn(17, 17), -1)}, [3], mask=_mask()),
    "roc": lambda: viz.plot_roc_curves({"a": (np.array([0, 0.5, 1]), np.array([0, 0.8, 1]), 0.7)}),
    "pro": lambda: viz.plot_pro_curves({"a": (np.array([0, 0.1, 0.3]), np.array([0, 0.5, 0.8]))}),
    "bars": lambda: viz.plot_bars({"x": {"m": 0.5, "n": 0.6}}, reference={"paper": {"m": 0.9}}),
    "comparison": lambda: viz.plot_comparison({"x": {"m": 50.0}}, paper={"x": {"m": 90.0}}, smoke=True),
    "loss": lambda: viz.plot_loss_curves({"a": [3.0, 2.0, 1.0]}, smooth=2),
    "k_shot": lambda: viz.plot_k_shot({"m": {2: [0.5, 0.6], 4: [0.7, 0.8]}}, reference={"p": {2: 80.0}}, hlines={"z": 0.5}),
    "confusion": lambda: viz.plot_confusion_matrix(np.array([[5, 1], [2, 4]]), threshold=0.5),
    "thresholds": lambda: viz.plot_thresholds(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]), {"F1-max": 0.5}),
    "histogram": lambda: viz.plot_score_histogram(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])),
}
MAPS = {"overlay", "map_grid", "attention", "attention_rows"}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_has_title_labels_and_colourbars(name):
    fig = FIGURES[name]()
    assert isinstance(fig, plt.Figure)
    assert _has_title(fig), name
    assert _labelled(fig), name
    if name in MAPS:
        assert _colourbars(fig) >= 1, f"{name}: maps need a colourbar"


def test_save_figure_writes_png(tmp_path: Path):
    fig = FIGURES["loss"]()
    path = viz.save_figure(fig, tmp_path / "out", "curve")
    assert path == tmp_path / "out" / "curve.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert viz.save_figure(fig, None, "x") is None


def test_show_saves_and_returns_nothing(tmp_path: Path):
    assert viz.show(FIGURES["loss"](), tmp_path, "shown") is None
    assert (tmp_path / "shown.png").is_file()


def test_paths_resolve_against_the_repository(tmp_path: Path):
    root = Path(__file__).resolve().parents[2]
    assert viz.repo_root(Path(__file__).parent) == root
    assert viz.resolve_path("figures/x", root) == root / "figures" / "x"
    assert viz.resolve_path(tmp_path) == tmp_path


def test_to_rgb_undoes_the_normalisation():
    rgb = np.random.rand(S, S, 3)
    tensor = (torch.from_numpy(rgb).permute(2, 0, 1) - torch.tensor(viz.OPENAI_MEAN)[:, None, None]) \
        / torch.tensor(viz.OPENAI_STD)[:, None, None]
    assert np.allclose(viz.to_rgb(tensor.float()), rgb, atol=1e-5)
    assert viz.to_rgb((rgb * 255).astype(np.uint8)).max() <= 1.0


def test_format_table_has_fixed_decimals():
    text = viz.format_table({"a": {"x": 0.123456, "y": float("nan")}}, decimals=2)
    assert "0.12" in text and "0.123" not in text and "nan" in text
    assert "12.3" in viz.format_table({"a": {"x": 0.123456}}, decimals=1, percent=True)


def test_defect_patch_finds_the_masked_cell():
    mask = np.zeros((S, S))
    mask[21:28, 0:7] = 1  # bottom-left cell of a 4 x 4 grid
    assert viz.defect_patch(mask, 4) == 12


def test_k_shot_legend_names_the_min_max_band_and_sits_below_the_axes():
    fig = viz.plot_k_shot({"m": {2: [0.5, 0.6], 4: [0.7, 0.8]}})
    legend = fig.legends[0]
    assert any("band = min-max over seeds" in t.get_text() for t in legend.get_texts())
    fig.canvas.draw()
    assert legend.get_window_extent().y1 <= fig.axes[0].get_window_extent().y0  # below the data, not over it


def test_k_shot_draws_a_published_curve_in_the_colour_of_its_method():
    fig = viz.plot_k_shot({"InCTRL": {2: [0.5, 0.6]}, "VAND": {2: [0.4, 0.5]}}, reference={"InCTRL, paper": {2: 85.8}})
    published, inctrl, vand = (line.get_color() for line in fig.axes[0].get_lines()[:3])
    assert published == inctrl != vand


def _legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_comparison_in_smoke_names_the_run_a_pipeline_check_and_draws_the_paper_first():
    fig = viz.plot_comparison({"AnomalyCLIP": {"pixel_auroc": 40.0}}, paper={"AnomalyCLIP": {"pixel_auroc": 95.5}},
                              smoke=True, title="t")
    assert _legend_texts(fig) == ["AnomalyCLIP", "style: paper", f"style: {viz.SMOKE_SERIES}"]  # colour, then source
    assert "random tiny CLIP" in viz.SMOKE_SERIES and viz.SMOKE_SERIES in fig.axes[0].get_title()
    paper, run = fig.axes[0].patches
    assert paper.get_height() == 95.5 and run.get_alpha() < paper.get_alpha() and run.get_hatch()


def test_comparison_with_real_weights_calls_the_run_this_run_and_takes_a_reference_run():
    fig = viz.plot_comparison({"a": {"m": 40.0}}, paper={"a": {"m": 95.5}}, reference_run={"a": {"m": 93.0}})
    assert _legend_texts(fig) == ["a", "style: this run", "style: paper", "style: reference run"]
    assert not any(viz.SMOKE_SERIES in t for t in _legend_texts(fig))


def test_comparison_groups_hold_only_the_bars_they_have_and_the_legend_sits_below():
    fig = viz.plot_comparison({"a": {"synthetic": 40.0}}, paper={"a": {"visa": 95.5}, "b": {"visa": 24.2}}, smoke=True)
    centres = sorted(round(p.get_x() + p.get_width() / 2, 6) for p in fig.axes[0].patches)
    assert centres[-1] == 1.0  # the smoke target's single bar is centred on its group, not shifted into empty slots
    fig.canvas.draw()
    assert fig.legends[0].get_window_extent().y1 <= fig.axes[0].get_window_extent().y0


def test_comparison_says_not_reported_where_the_paper_gives_no_value():
    fig = viz.plot_comparison({"a": {"m": 40.0, "n": 30.0}}, paper={"a": {"m": 95.5, "n": None}})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert viz.NOT_REPORTED in texts and any("no sourced value" in t for t in _legend_texts(fig))


def test_k_shot_in_smoke_names_the_measured_curves_a_pipeline_check():
    fig = viz.plot_k_shot({"InCTRL": {2: [0.5, 0.6], 4: [0.7, 0.8]}}, reference={"InCTRL, paper": {2: 85.8, 4: 87.7}},
                          smoke=True)
    labels = _legend_texts(fig)
    assert labels[0].startswith("InCTRL, paper") and labels[-1] == f"dotted, faded: {viz.SMOKE_SERIES}"
    published, measured = fig.axes[0].get_lines()[:2]
    assert published.get_linestyle() == "-" and measured.get_linestyle() == ":" and measured.get_alpha() == 0.5


def test_a_smoke_run_watermarks_its_result_figures_but_not_the_pictures_of_a_dataset(monkeypatch):
    shown = []
    monkeypatch.setattr(viz.plt, "close", lambda fig: shown.append(fig))
    monkeypatch.setattr("IPython.get_ipython", lambda: object())
    monkeypatch.setattr("IPython.display.display", lambda fig: None)
    viz.label_smoke_figures(True)
    try:
        viz.show(viz.plot_comparison({"a": {"m": 40.0}}))
        viz.show(viz.plot_sample_grid([np.zeros((S, S, 3))], [np.zeros((S, S))], ["good"], title="data"))
    finally:
        viz.label_smoke_figures(False)
    result, data = ([t.get_text() for t in fig.texts] for fig in shown)
    watermark = viz.SMOKE_LABEL.replace(" - ", "\n")
    assert watermark in result and watermark not in data


def test_comparison_axes_name_the_metrics_in_words_and_histograms_count_whole_images():
    fig = viz.plot_comparison({"a": {"image_auroc": 40.0, "aupro_anomalyclip": 20.0}})
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["image AUROC", "AUPRO (200 thr.)"]
    fig = viz.plot_score_histogram(np.array([0.1, 0.2, 0.9]), np.array([0, 0, 1]))
    assert all(float(t).is_integer() for t in fig.axes[0].get_yticks())


def test_loss_curves_tick_whole_steps_and_bars_draw_a_chance_line():
    fig = viz.plot_loss_curves({"run": [1.0]}, xlabel="epoch")
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    fig = viz.plot_bars({"N = 5": {"image AUROC": 39.0}}, ylim=(0, 100), hlines={"chance (50 %)": 50.0})
    assert "chance (50 %)" in _legend_texts(fig)


def test_smoke_bars_are_faded_and_titled_as_a_pipeline_check():
    fig = viz.plot_bars({"image AUROC": {"N = 5": 39.0, "N = 10": 61.0}}, ylim=(0, 100), smoke=True)
    assert "SMOKE" in fig.axes[0].get_title() and viz.SMOKE_SERIES in fig.axes[0].get_title()
    assert all(bar.get_alpha() < 0.5 and bar.get_hatch() for bar in fig.axes[0].patches if bar.get_height() > 0)
    assert fig.axes[0].get_legend().legend_handles[0].get_alpha() < 0.5  # the swatch looks like its bars
    fig = viz.plot_bars({"image AUROC": {"N = 5": 39.0}}, ylim=(0, 100))
    assert "SMOKE" not in fig.axes[0].get_title()


def test_k_shot_names_methods_without_a_published_curve_and_draws_published_lines_as_published():
    fig = viz.plot_k_shot({"InCTRL": {2: [0.5, 0.6]}, "VAND": {2: [0.4, 0.5]}}, reference={"InCTRL, paper": {2: 85.8}},
                          published_hlines={"zero-shot AnomalyCLIP, paper": 82.1}, smoke=True)
    labels = _legend_texts(fig)
    assert "zero-shot AnomalyCLIP, paper (published, not produced here)" in labels
    assert any(t.startswith("VAND: n.r.") for t in labels) and not any(t.startswith("InCTRL: n.r.") for t in labels)
