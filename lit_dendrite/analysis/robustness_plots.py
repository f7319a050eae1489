"""Robustness figures: a sweep's accuracy under corruptions and attacks (one panel per net, the difference from the
ReLU control beneath), and one run's ``robustness.json`` (accuracy per corruption, robust accuracy per attack).

Accuracies are drawn in % from 0 to 100 (so no gap is exaggerated) and differences in percentage points (so the
differences the tables report are visible); every error bar says in the figure what it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.image import imsave

from lit_dendrite.analysis.plots import SD_OVER_RUNS, figure_to_rgb, group_by_panel, panel_colours
from lit_dendrite.io import atomic_path
from lit_dendrite.robustness.store import REFUSED

CORRUPTION_FIGURE = "accuracy_per_corruption_vs_severity.png"
ATTACK_FIGURE = "robust_accuracy_vs_epsilon.png"
MARKERS = "osD^vP*X"
DIFFERENCE_BARS = "difference of means ± its standard error"


def robustness_figure(
    levels: pd.DataFrame,
    differences: pd.DataFrame,
    panels: Mapping[str, str] | None,
    x_label: str,
    y_label: str,
    title: str,
) -> Figure:
    """Accuracy-like measure (fractions, drawn in %) against ``x`` (severity, epsilon): a column per net (``panels``:
    condition -> panel title), mean ± sd over runs on [0, 100]%; beneath, where ``differences`` has rows, each
    condition minus its control in percentage points with the standard error of that difference.

    ``levels``: condition, x, mean, sd, n; ``differences``: condition, versus, x, difference, se. Integer ``x``
    (severities) gets integer ticks; the conditions of a panel are shifted a little along x so that no error bar
    hides another.
    """
    grouped = group_by_panel(levels["condition"].unique(), panels)
    rows = 2 if not differences.empty else 1
    figure = Figure(figsize=(4.6 * len(grouped), 3.3 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, len(grouped), squeeze=False, sharex="col", sharey="row")
    xs = np.sort(levels["x"].unique())
    integer = bool(np.all(np.equal(np.mod(xs, 1), 0)))
    spread = 0.06 * (float(np.min(np.diff(xs))) if len(xs) > 1 else 1.0)
    for column, (panel, conditions) in enumerate(grouped.items()):
        colours = panel_colours(conditions)
        shift = {c: (i - (len(conditions) - 1) / 2) * spread for i, c in enumerate(conditions)}
        style = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(conditions)}
        ax = axes[0, column]
        for condition in conditions:
            part = levels[levels["condition"] == condition].sort_values("x")
            ax.errorbar(
                part["x"] + shift[condition],
                100 * part["mean"],
                yerr=100 * part["sd"].fillna(0),
                marker=style[condition],
                ms=4,
                capsize=3,
                color=colours[condition],
                label=f"{condition} (n={int(part['n'].max())})",
            )
        ax.set_ylim(0, 100)
        ax.set_title(panel or "all conditions", fontsize=10)
        ax.legend(fontsize=7)
        if rows == 2:
            ax = axes[1, column]
            ax.axhline(0, color="black", linewidth=0.8)
            for condition in conditions:
                part = differences[differences["condition"] == condition].sort_values("x")
                if part.empty:
                    continue
                ax.errorbar(
                    part["x"] + shift[condition],
                    100 * part["difference"],
                    yerr=100 * part["se"].fillna(0),
                    marker=style[condition],
                    ms=4,
                    capsize=3,
                    color=colours[condition],
                    label=f"{condition} − {part['versus'].iloc[0]}",
                )
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
            if integer:
                ax.set_xticks(xs)
        axes[-1, column].set_xlabel(x_label)
    axes[0, 0].set_ylabel(f"{y_label} (%)\n{SD_OVER_RUNS}")
    if rows == 2:
        axes[1, 0].set_ylabel(f"minus the ReLU control (percentage points)\n{DIFFERENCE_BARS}", fontsize=9)
    figure.suptitle(title, fontsize=11)
    return figure


def corruption_figure(corruptions: Mapping[str, Any]) -> Figure:
    """A run's accuracy (%) against severity, one panel per corruption, its mCE baseline (the run it is compared
    with) dashed (a robustness.json section)."""
    accuracy = corruptions["accuracy"]
    baseline = corruptions.get("baseline") or {}
    baseline_name = "/".join(Path(baseline.get("run_dir", "")).parts[-2:])
    baseline_label = f"mCE baseline ({baseline.get('chosen', 'control')}): {baseline_name}"
    names = list(accuracy)
    columns = min(5, len(names))
    rows = -(-len(names) // columns)
    width, height = 3 * columns + 0.6, 2.4 * rows + 0.9
    figure = Figure(figsize=(width, height))  # fixed margins: a layout engine takes seconds for 15 panels
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
    figure.subplots_adjust(
        left=0.75 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.55 / height, hspace=0.45
    )
    for ax, name in zip(axes.flat, names):
        for table, style, label in (
            (accuracy, "-o", "this run"),
            (baseline.get("accuracy", {}), "--s", baseline_label),
        ):
            if name in table:
                severities = sorted(table[name], key=int)
                values = [100 * table[name][s] for s in severities]
                ax.plot([int(s) for s in severities], values, style, label=label, ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 100)
        ax.set_xticks(range(1, 6))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncols=2, fontsize=8, bbox_to_anchor=(0.5, 1 - 0.05 / height))
    figure.supxlabel("severity", y=0.1 / height)
    figure.supylabel("accuracy (%)", x=0.12 / width)
    return figure


def adversarial_figure(adversarial: Mapping[str, Mapping[str, Any]]) -> Figure:
    """A run's robust accuracy (%) against epsilon, one panel per attack: reported (worst case over this and every
    smaller epsilon) solid, the attack at this epsilon alone dotted."""
    width, height = 3.2 * len(adversarial) + 0.6, 3.2
    figure = Figure(figsize=(width, height))
    axes = figure.subplots(1, len(adversarial), squeeze=False)
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=0.8, wspace=0.3)
    for ax, (name, result) in zip(axes.flat, adversarial.items()):
        epsilons = result["epsilons"]
        ax.plot(
            epsilons,
            100 * np.asarray(result["robust_accuracy"]),
            "-o",
            ms=3,
            label="reported: worst case over every eps up to this",
        )
        ax.plot(epsilons, 100 * np.asarray(result["robust_accuracy_raw"]), ":", label="this eps alone")
        ax.set_title(f"{name} ({result['attack']['norm']})", fontsize=9)
        ax.set_xlabel("epsilon (pixels in [0, 1])")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("robust accuracy (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncols=2, fontsize=8)
    return figure


def write_robustness_figures(report: Mapping[str, Any], directory: Path) -> list[Path]:
    """PNG plots of a robustness report (:data:`CORRUPTION_FIGURE`, :data:`ATTACK_FIGURE`) in ``directory``, and the
    same figures and headline numbers in a TensorBoard event file there."""
    from torch.utils.tensorboard import SummaryWriter

    directory.mkdir(parents=True, exist_ok=True)
    corruptions = report.get("corruptions") or {}
    adversarial = {name: result for name, result in (report.get("adversarial") or {}).items() if REFUSED not in result}
    figures = {}
    if corruptions:
        figures[CORRUPTION_FIGURE] = corruption_figure(corruptions)
    if adversarial:
        figures[ATTACK_FIGURE] = adversarial_figure(adversarial)
    written = []
    with SummaryWriter(log_dir=str(directory)) as writer:
        writer.add_scalar("robustness/clean_acc", report["clean"]["accuracy"])
        for key in ("mean_corruption_accuracy", "mCE", "relative_mCE"):
            value = corruptions.get(key)
            if value is not None:
                writer.add_scalar(f"robustness/{key}", value)
        for name, result in adversarial.items():
            if "reported" in result:
                writer.add_scalar(f"robustness/{name}_acc", result["reported"]["robust_accuracy"])
        for name, figure in figures.items():  # drawn once, for the PNG and TensorBoard alike
            figure.set_dpi(120)
            image = figure_to_rgb(figure)
            path = directory / name
            with atomic_path(path) as tmp:
                imsave(tmp, image, format="png")
            written.append(path)
            writer.add_image(f"robustness/{Path(name).stem}", image, dataformats="HWC")
    return written
