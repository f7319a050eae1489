"""Figures of the analysis: surfaces, the surface gallery, learned one-argument activations, learning curves,
learning speed, robustness curves (sweep means and one run's ``robustness.json``).

Built on ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot state), so they work headless, in worker
processes and in notebooks alike. ``save_figure`` writes a PNG atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage, imsave

from lit_dendrite.analysis.activations import CurveAnalysis
from lit_dendrite.analysis.surfaces import Region, Surface
from lit_dendrite.analysis.xor import QuadraticFit, XorAnalysis
from lit_dendrite.io import atomic_path
from lit_dendrite.robustness.store import REFUSED
from lit_dendrite.runs import FROZEN, JOINT


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def figure_to_rgb(figure: Figure) -> np.ndarray:
    """The rendered figure as a uint8 array (height, width, 3), e.g. for TensorBoard's ``add_image``."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def draw_surface(
    ax: Axes,
    surface: Surface,
    region: Region | None = None,
    fit: QuadraticFit | None = None,
    title: str | None = None,
    show_density: bool = False,
) -> AxesImage:
    """Heat map of the surface; the region's outline (white), optionally the input density (black: contours holding
    25/50/75% of the pairs) and the quadratic fit's contours (dashed gold)."""
    grid = surface.grid
    extent = (grid.low - grid.step / 2, grid.high + grid.step / 2) * 2
    image = ax.imshow(surface.values, origin="lower", extent=extent, cmap="RdBu_r", interpolation="nearest")
    x, y = grid.mesh()
    if region is not None:
        ax.contour(x, y, region.mask.astype(float), levels=[0.5], colors="white", linewidths=1.5)
        if show_density:
            # density levels whose superlevel sets hold 75%, 50% and 25% of the pairs
            ranked = np.sort(region.density, axis=None)[::-1]
            cumulative = np.cumsum(ranked)
            levels = np.unique([ranked[np.searchsorted(cumulative, mass)] for mass in (0.75, 0.5, 0.25)])
            ax.contour(x, y, region.density, levels=levels, colors="black", linewidths=0.6)
    if fit is not None:
        ax.contour(x, y, fit(x, y), levels=9, colors="gold", linewidths=0.8, linestyles="dashed")
    ax.set(xlabel="x (input 1)", ylabel="y (input 2)")
    if title:
        ax.set_title(title, fontsize=9)
    return image


def surface_figure(
    surface: Surface,
    region: Region | None = None,
    fit: QuadraticFit | None = None,
    title: str | None = None,
    show_density: bool = False,
) -> Figure:
    """One surface with a colour bar (see :func:`draw_surface`)."""
    figure = Figure(figsize=(4.6, 4))
    ax = figure.add_subplot()
    figure.colorbar(draw_surface(ax, surface, region, fit, title, show_density), ax=ax)
    return figure


def surface_gallery(analyses: Sequence[tuple[str, XorAnalysis]], columns: int = 4) -> Figure:
    """All surfaces side by side, each with its 90% input region outlined and its saddle verdict."""
    if not analyses:
        raise ValueError("the surface gallery needs at least one analysed surface")
    figure, axes = _panels(len(analyses), columns)
    for ax, (label, analysis) in zip(axes, analyses):
        verdict = "saddle" if analysis.fit.is_saddle else "not saddle"
        fit = analysis.fit
        gain = fit.r_squared - fit.linear_r_squared
        title = (
            f"{label}\n{verdict}, R²={fit.r_squared:.2f} (plane +{gain:.2f}), l=2: {analysis.harmonics.fraction[2]:.0%}"
        )
        figure.colorbar(draw_surface(ax, analysis.surface, analysis.region, title=title), ax=ax, shrink=0.8)
    return figure


def surfaces_figure(surfaces: Sequence[tuple[str, Surface]], columns: int = 5) -> Figure:
    """Several surfaces side by side (a net's cell types), each titled with its label."""
    if not surfaces:
        raise ValueError("surfaces_figure needs at least one surface")
    figure, axes = _panels(len(surfaces), columns)
    for ax, (label, surface) in zip(axes, surfaces):
        figure.colorbar(draw_surface(ax, surface, title=label), ax=ax, shrink=0.8)
    return figure


def _panels(count: int, columns: int) -> tuple[Figure, np.ndarray]:
    """A figure of ``count`` panels in rows of ``columns`` (3.2 x 3 inches each), unused panels hidden; returns the
    figure and the ``count`` axes to draw on."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return figure, axes[:count]


def activation_figure(panels: Mapping[str, Sequence[tuple[str, CurveAnalysis]]], columns: int = 3) -> Figure:
    """Learned one-argument activations, one panel per key (a condition), one line per labelled curve (a run), ReLU
    dashed; each curve's central input interval (where its inputs lie) shaded."""
    if not panels:
        raise ValueError("the activation figure needs at least one panel")
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.6 * columns, 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (title, curves) in zip(axes, panels.items()):
        for label, curve in curves:
            (line,) = ax.plot(curve.x, curve.values, label=label, linewidth=1)
            if curve.interval is not None:
                ax.axvspan(*curve.interval, color=line.get_color(), alpha=0.08)
        if curves:
            x = curves[0][1].x
            ax.plot(x, np.maximum(x, 0), color="black", linestyle="dashed", linewidth=0.8, label="ReLU")
        ax.set(xlabel="input", ylabel="activation")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    return figure


def learning_curve_figure(curves: pd.DataFrame, offsets: pd.DataFrame, tags: Sequence[str] | None = None) -> Figure:
    """Mean +- sd of each tag against epoch per condition; a dotted line where session III starts."""
    tags = list(tags or curves["tag"].unique())
    figure = Figure(figsize=(6 * len(tags), 4), layout="constrained")
    axes = figure.subplots(1, len(tags), squeeze=False).ravel()
    conditions = sorted(curves["condition"].unique())
    colours = {condition: f"C{index % 10}" for index, condition in enumerate(conditions)}
    for ax, tag in zip(axes, tags):
        of_tag = curves[curves["tag"] == tag]
        for condition in conditions:
            for session, style in ((JOINT, "-"), (FROZEN, "--")):
                part = of_tag[(of_tag["condition"] == condition) & (of_tag["session"] == session)]
                if part.empty:
                    continue
                sd = part["sd"].fillna(0).to_numpy()
                label = condition if session == JOINT else f"{condition} (III)"
                ax.plot(part["x"], part["mean"], style, color=colours[condition], label=label)
                low, high = part["mean"] - sd, part["mean"] + sd
                if tag.endswith("acc"):  # an accuracy band stays within what an accuracy can be
                    low, high = low.clip(0, 1), high.clip(0, 1)
                ax.fill_between(part["x"], low, high, color=colours[condition], alpha=0.2)
                if session == FROZEN:
                    start = offsets[(offsets["condition"] == condition) & (offsets["session"] == session)]["offset"]
                    ax.axvline(float(start.iloc[0]) - 0.5, color=colours[condition], linestyle=":", linewidth=1)
        ax.set(xlabel="epoch (session II, then III after the dotted line)", ylabel=tag, title=f"{tag}: mean ± sd")
        ax.legend(fontsize=7)
    return figure


def speed_figure(speed_summary: pd.DataFrame) -> Figure:
    """Bars of mean +- sd epochs to reach 95% / 99% of the final accuracy, per condition and session."""
    measures = sorted(c[: -len("_mean")] for c in speed_summary.columns if c.endswith("_mean"))
    labels = [f"{row.condition}\n{row.session}" for row in speed_summary.itertuples()]
    figure = Figure(figsize=(max(5, 1.2 * len(labels)), 4), layout="constrained")
    ax = figure.add_subplot()
    width = 0.8 / len(measures)
    positions = np.arange(len(labels))
    for index, measure in enumerate(measures):
        ax.bar(
            positions + index * width,
            speed_summary[f"{measure}_mean"],
            width,
            yerr=speed_summary[f"{measure}_sd"].fillna(0),
            label=measure.replace("_", " ") + "% of final",
            capsize=3,
        )
    ax.set_xticks(positions + width * (len(measures) - 1) / 2, labels, fontsize=7, rotation=30, ha="right")
    ax.set(ylabel="epochs", title="Learning speed: epochs to reach a fraction of the final val/acc")
    ax.legend(fontsize=8)
    return figure


def curve_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, title: str
) -> Figure:
    """Line plot of mean +- sd curves, ``{label: (x, mean, sd)}`` (robust accuracy vs eps, accuracy vs severity)."""
    figure = Figure(figsize=(5.5, 4), layout="constrained")
    ax = figure.add_subplot()
    for label, (x, mean, sd) in curves.items():
        x, mean, sd = (np.asarray(v, dtype=float) for v in (x, mean, sd))
        ax.errorbar(x, mean, yerr=np.nan_to_num(sd), marker="o", capsize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    return figure


def corruption_figure(corruptions: Mapping[str, Any]) -> Figure:
    """A run's accuracy vs severity, one panel per corruption, its mCE baseline dashed (a robustness.json section)."""
    accuracy = corruptions["accuracy"]
    baseline = (corruptions.get("baseline") or {}).get("accuracy", {})
    names = list(accuracy)
    columns = min(5, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(3 * columns, 2.4 * rows))  # fixed margins: a layout engine takes seconds for 15 panels
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
    figure.subplots_adjust(left=0.6 / (3 * columns), right=0.98, bottom=0.5 / (2.4 * rows), top=0.92, hspace=0.5)
    for ax, name in zip(axes.flat, names):
        for table, style, label in ((accuracy, "-o", "run"), (baseline, "--s", "baseline")):
            if name in table:
                severities = sorted(table[name], key=int)
                ax.plot([int(s) for s in severities], [table[name][s] for s in severities], style, label=label, ms=3)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    figure.supxlabel("severity")
    figure.supylabel("accuracy")
    return figure


def adversarial_figure(adversarial: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Robust accuracy vs epsilon, one panel per attack (worst case over smaller eps solid, raw dotted)."""
    figure = Figure(figsize=(3.2 * len(adversarial), 2.8))
    axes = figure.subplots(1, len(adversarial), squeeze=False)
    figure.subplots_adjust(left=0.6 / (3.2 * len(adversarial)), right=0.98, bottom=0.18, top=0.88, wspace=0.3)
    for ax, (name, result) in zip(axes.flat, adversarial.items()):
        ax.plot(result["epsilons"], result["robust_accuracy"], "-o", ms=3, label="worst case")
        ax.plot(result["epsilons"], result["robust_accuracy_raw"], ":", label="raw")
        ax.set_title(f"{name} ({result['attack']['norm']})", fontsize=9)
        ax.set_xlabel("epsilon")
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("robust accuracy")
    axes[0, 0].legend(fontsize=7)
    return figure


def write_robustness_figures(report: Mapping[str, Any], directory: Path) -> list[Path]:
    """PNG plots of a robustness report (``corruptions.png``, ``adversarial.png``) in ``directory``, and the
    same figures and headline numbers in a TensorBoard event file there."""
    from torch.utils.tensorboard import SummaryWriter

    directory.mkdir(parents=True, exist_ok=True)
    corruptions = report.get("corruptions") or {}
    adversarial = {name: result for name, result in (report.get("adversarial") or {}).items() if REFUSED not in result}
    figures = {}
    if corruptions:
        figures["corruptions"] = corruption_figure(corruptions)
    if adversarial:
        figures["adversarial"] = adversarial_figure(adversarial)
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
            path = directory / f"{name}.png"
            with atomic_path(path) as tmp:
                imsave(tmp, image, format="png")
            written.append(path)
            writer.add_image(f"robustness/{name}", image, dataformats="HWC")
    return written
