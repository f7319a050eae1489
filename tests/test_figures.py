"""What a reader sees in the figures, checked on the figure objects: units (%), limits, labelled colour bars centred
on 0, integer severities, error bars said in the figure, one panel per net, labels that do not overlap."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection

from lit_dendrite.analysis.activations import CurveAnalysis
from lit_dendrite.analysis.curves import learning_curves, session_offsets
from lit_dendrite.analysis.plots import SURFACE_LABEL, activation_figure, learning_curve_figure, surface_gallery
from lit_dendrite.analysis.robustness_plots import adversarial_figure, corruption_figure, robustness_figure
from lit_dendrite.analysis.surfaces import density_region, evaluate_surface
from lit_dendrite.analysis.xor import analyse_xor

PANELS = {"mlp_2arg": "digits / MLP", "mlp_relu": "digits / MLP", "cnn_2arg": "digits / CNN"}


def scalars() -> pd.DataFrame:
    """val/acc and val/loss of two runs per condition; 2-arg conditions have a session III; the runs of mlp_2arg
    differ so much that mean ± sd leaves [0, 1]."""
    rows = []
    for condition in PANELS:
        sessions = ("II_joint", "III_frozen") if condition.endswith("2arg") else ("II_joint",)
        for seed, accuracies in enumerate(
            ([0.2, 0.9, 1.0], [0.0, 0.5, 0.99] if condition == "mlp_2arg" else [0.3, 0.8, 0.95])
        ):
            for session in sessions:
                for epoch, accuracy in enumerate(accuracies):
                    run = f"{condition}/seed={seed}"
                    rows.append((condition, run, session, epoch, "val/acc", accuracy))
                    rows.append((condition, run, session, epoch, "val/loss", 2.3 * (1 - accuracy)))
    return pd.DataFrame(rows, columns=["condition", "run", "session", "epoch", "tag", "value"])


def test_learning_curves_have_a_column_per_net_readable_labels_and_bands_within_0_100():
    table = scalars()
    figure = learning_curve_figure(learning_curves(table), session_offsets(table), PANELS)
    axes = np.array(figure.axes).reshape(2, 2)  # rows: accuracy, loss; columns: nets in sorted order
    assert [ax.get_title() for ax in axes[0]] == ["digits / CNN", "digits / MLP"]
    assert {ax.get_ylabel() for ax in axes[0]} == {"validation accuracy (%)"}
    assert all("val/" not in ax.get_ylabel() for ax in figure.axes)
    for ax in axes[0]:
        assert ax.get_ylim() == (0, 100)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert bands and all(0 <= y <= 100 for band in bands for y in band.get_paths()[0].vertices[:, 1])
    mlp = axes[0, 1]
    assert [t.get_text() for t in mlp.get_legend().get_texts()] == ["mlp_2arg (n=2)", "mlp_relu (n=2)"]
    colours = {line.get_color() for line in mlp.get_lines() if line.get_label() in ("mlp_2arg (n=2)", "mlp_relu (n=2)")}
    assert len(colours) == 2
    assert any("session III" in text.get_text() for text in mlp.texts), "the session boundary is labelled"
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert any("session II" in t for t in legend) and any("sd over runs" in t for t in legend)


def test_robustness_figure_in_percent_from_0_with_integer_severities_and_defined_error_bars():
    levels = pd.DataFrame(
        [(c, s, 0.9 - 0.1 * s, 0.02, 3) for c in PANELS for s in range(1, 6)],
        columns=["condition", "x", "mean", "sd", "n"],
    )
    differences = pd.DataFrame(
        [("mlp_2arg", "mlp_relu", s, 0.01, 0.005) for s in range(1, 6)],
        columns=["condition", "versus", "x", "difference", "se"],
    )
    figure = robustness_figure(levels, differences, PANELS, "severity", "accuracy", "Accuracy under corruptions")
    axes = np.array(figure.axes).reshape(2, 2)
    assert axes[0, 0].get_ylim() == (0, 100)
    assert "(%)" in axes[0, 0].get_ylabel() and "mean ± sd over runs" in axes[0, 0].get_ylabel()
    assert "percentage points" in axes[1, 0].get_ylabel() and "standard error" in axes[1, 0].get_ylabel()
    assert list(axes[1, 1].get_xticks()) == [1, 2, 3, 4, 5], "severities are integers"
    mlp_bars = [line.get_ydata() for line in axes[1, 1].get_lines() if len(line.get_ydata()) == 5]
    assert any(np.allclose(y, 1.0) for y in mlp_bars), "the difference is drawn in percentage points"


def test_surface_gallery_has_a_title_and_one_labelled_colour_bar_centred_on_zero():
    region = density_region(np.random.default_rng(0).normal(size=(20_000, 2)))
    small = analyse_xor(evaluate_surface(lambda p: p[..., 0] * p[..., 1] + 1.0), region)
    large = analyse_xor(evaluate_surface(lambda p: 3 * p[..., 0] ** 2), region)
    figure = surface_gallery([("seed=1", small), ("seed=2", large)], title="mlp_digits_2arg")
    assert "mlp_digits_2arg" in figure.get_suptitle()
    images = [image for ax in figure.axes for image in ax.get_images()]
    assert len(images) == 2 and images[0].norm is images[1].norm, "one colour scale for the panels compared"
    assert images[0].norm.vmin == -images[0].norm.vmax > -np.inf
    bars = [ax for ax in figure.axes if SURFACE_LABEL in ax.get_ylabel()]
    assert len(bars) == 1, "one labelled colour bar"
    titles = [ax.get_title() for ax in figure.axes if ax.get_images()]
    assert "saddle: a soft XOR" in titles[0] and "no saddle" in titles[1]


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("count", [2, 15])
def test_a_runs_corruption_figure_names_its_baseline_and_no_label_covers_a_tick(count):
    names = [f"corruption_{i}" for i in range(count)]
    section = {
        "accuracy": {name: {str(s): 1 - 0.1 * s for s in range(1, 6)} for name in names},
        "baseline": {
            "run_dir": "/runs/sweep/mlp_digits_relu/seed=1",
            "chosen": "sweep ReLU control",
            "accuracy": {name: {str(s): 0.95 - 0.1 * s for s in range(1, 6)} for name in names},
        },
    }
    figure = corruption_figure(section)
    renderer = FigureCanvasAgg(figure).get_renderer()
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["this run", "mCE baseline (sweep ReLU control): mlp_digits_relu/seed=1"]
    ax = figure.axes[0]
    assert ax.get_ylim() == (0, 100) and list(ax.get_xticks()) == [1, 2, 3, 4, 5]
    label = figure._supylabel.get_window_extent(renderer)
    ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and not any(_overlaps(label, tick) for tick in ticks)


def test_a_runs_attack_figure_is_in_percent():
    result = {
        "epsilons": [0.0, 0.1],
        "robust_accuracy": [0.9, 0.2],
        "robust_accuracy_raw": [0.9, 0.3],
        "attack": {"norm": "linf"},
    }
    figure = adversarial_figure({"linf_pgd": result})
    ax = figure.axes[0]
    assert ax.get_ylabel() == "robust accuracy (%)" and ax.get_ylim() == (0, 100)
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([90, 20])


def test_the_activation_figure_keeps_its_title_and_titles_each_panel_with_its_condition():
    curve = CurveAnalysis(np.linspace(-5, 5, 11), np.linspace(-5, 5, 11) ** 2, (-1.0, 1.0))
    figure = activation_figure({"mlp_1arg": [("seed=1", curve)], "cnn_1arg": [("seed=1", curve)]}, title="Learned")
    assert figure.get_suptitle() == "Learned"
    assert [ax.get_title() for ax in figure.axes] == ["mlp_1arg", "cnn_1arg"]
