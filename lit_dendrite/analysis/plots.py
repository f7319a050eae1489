"""Figures of the analysis: surfaces, the surface gallery, learned one-argument activations, learning curves and
learning speed (the robustness figures are in ``robustness_plots``).

Built on ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot state), so they work headless, in worker
processes and in notebooks alike. ``save_figure`` writes a PNG atomically. Accuracies are drawn in % (the tables'
unit), every error bar or band says in the figure what it is, and a diverging colour map is centred on 0.
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
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lit_dendrite.analysis.activations import CurveAnalysis
from lit_dendrite.analysis.curves import SESSION_NAMES
from lit_dendrite.analysis.surfaces import Region, Surface
from lit_dendrite.analysis.xor import QuadraticFit, XorAnalysis
from lit_dendrite.io import atomic_path
from lit_dendrite.runs import FROZEN, JOINT

SURFACE_COLOURS = "RdBu_r"  # diverging: negative blue, 0 white, positive red
SURFACE_LABEL = "inner-net output"
TAG_LABELS = {"val/acc": "validation accuracy (%)", "val/loss": "validation loss (cross-entropy)"}
PERCENT_TAGS = ("val/acc",)  # logged as fractions, drawn in %
SD_OVER_RUNS = "mean ± sd over runs"


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


def symmetric_norm(surfaces: Sequence[Surface], regions: Sequence[Region | None] | None = None) -> Normalize:
    """One colour scale for surfaces compared side by side, centred on 0: [-m, m] with m their largest |value|
    (inside each one's region where ``regions`` are given: where the inputs lie; beyond, the colours saturate)."""
    regions = regions or [None] * len(surfaces)
    limit = max(
        float(np.abs(surface.values if region is None else surface.values[region.mask]).max())
        for surface, region in zip(surfaces, regions)
    )
    return Normalize(-(limit or 1.0), limit or 1.0)


def _colourbar(figure: Figure, image: AxesImage, axes: Any, label: str, surfaces: Sequence[Surface]) -> None:
    """A labelled colour bar for ``surfaces`` drawn on ``image``'s scale, with an arrow end where their colours
    saturate (values beyond the scale)."""
    values = np.concatenate([surface.values.ravel() for surface in surfaces])
    low, high = image.norm.vmin, image.norm.vmax
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}
    ends = extend[(bool((values < low).any()), bool((values > high).any()))]
    figure.colorbar(image, ax=axes, label=label, shrink=0.6 if isinstance(axes, np.ndarray) else 1.0, extend=ends)


def draw_surface(
    ax: Axes,
    surface: Surface,
    region: Region | None = None,
    fit: QuadraticFit | None = None,
    title: str | None = None,
    show_density: bool = False,
    norm: Normalize | None = None,
) -> AxesImage:
    """Heat map of the surface on ``norm`` (default: centred on 0, see :func:`symmetric_norm`); the region's outline
    (black), optionally the input density (grey: contours holding 25/50/75% of the pairs) and the quadratic fit's
    contours (dashed gold)."""
    grid = surface.grid
    extent = (grid.low - grid.step / 2, grid.high + grid.step / 2) * 2
    norm = norm or symmetric_norm([surface])
    image = ax.imshow(surface.values, origin="lower", extent=extent, cmap=SURFACE_COLOURS, norm=norm)
    image.set_interpolation("nearest")
    x, y = grid.mesh()
    if region is not None:
        ax.contour(x, y, region.mask.astype(float), levels=[0.5], colors="black", linewidths=1.3)
        if show_density:
            # density levels whose superlevel sets hold 75%, 50% and 25% of the pairs
            ranked = np.sort(region.density, axis=None)[::-1]
            cumulative = np.cumsum(ranked)
            levels = np.unique([ranked[np.searchsorted(cumulative, mass)] for mass in (0.75, 0.5, 0.25)])
            ax.contour(x, y, region.density, levels=levels, colors="dimgrey", linewidths=0.6)
    if fit is not None:
        ax.contour(x, y, fit(x, y), levels=9, colors="gold", linewidths=0.8, linestyles="dashed")
    ax.set(xlabel="input 1", ylabel="input 2")
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
    """One surface with a labelled colour bar (see :func:`draw_surface`)."""
    figure = Figure(figsize=(4.6, 4))
    ax = figure.add_subplot()
    image = draw_surface(ax, surface, region, fit, title, show_density)
    _colourbar(figure, image, ax, SURFACE_LABEL, [surface])
    return figure


def surface_gallery(analyses: Sequence[tuple[str, XorAnalysis]], title: str = "", columns: int = 4) -> Figure:
    """All surfaces of one condition side by side on one colour scale centred on 0, each with its 90% input region
    outlined and its verdict in plain words; ``title`` names what they are (e.g. the condition)."""
    if not analyses:
        raise ValueError("the surface gallery needs at least one analysed surface")
    figure, axes = _panels(len(analyses), columns)
    norm = symmetric_norm([a.surface for _, a in analyses], [a.region for _, a in analyses])
    for ax, (label, analysis) in zip(axes, analyses):
        fit = analysis.fit
        verdict = "saddle: a soft XOR" if fit.is_saddle else "no saddle: not XOR-like"
        panel_title = (
            f"{label}: {verdict}\nquadratic fit R² {fit.r_squared:.2f} (a plane: {fit.linear_r_squared:.2f})\n"
            f"XOR pattern (l=2): {analysis.harmonics.fraction[2]:.0%} of the variation"
        )
        image = draw_surface(ax, analysis.surface, analysis.region, title=panel_title, norm=norm)
    _colourbar(figure, image, axes, f"{SURFACE_LABEL} (one scale for all panels)", [a.surface for _, a in analyses])
    figure.suptitle(f"Learned inner-net surfaces{': ' + title if title else ''}, one panel per run", fontsize=11)
    figure.text(
        0.5,
        0,
        "Colour: the shared inner net's output for each pair of inputs (white: 0; the scale spans the values inside "
        "the outlines). Black outline: the region holding 90% of the input pairs the net receives on test images.\n"
        "Saddle: the quadratic fitted inside the outline rises along one direction and falls along another, as XOR "
        "does; R²: how well the quadratic (or a plane) fits there.",
        ha="center",
        va="top",
        fontsize=8,
    )
    return figure


def surfaces_figure(surfaces: Sequence[tuple[str, Surface]], columns: int = 5) -> Figure:
    """Several surfaces side by side (a net's cell types) on one colour scale centred on 0, each titled with its
    label."""
    if not surfaces:
        raise ValueError("surfaces_figure needs at least one surface")
    figure, axes = _panels(len(surfaces), columns)
    norm = symmetric_norm([surface for _, surface in surfaces])
    for ax, (label, surface) in zip(axes, surfaces):
        image = draw_surface(ax, surface, title=label, norm=norm)
    _colourbar(figure, image, axes, SURFACE_LABEL, [surface for _, surface in surfaces])
    return figure


def _panels(count: int, columns: int) -> tuple[Figure, np.ndarray]:
    """A figure of ``count`` panels in rows of ``columns`` (3.2 x 3.2 inches each), unused panels hidden; returns the
    figure and the ``count`` axes to draw on."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.2 * columns + 0.8, 3.3 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_axis_off()
    return figure, axes[:count]


def activation_figure(
    panels: Mapping[str, Sequence[tuple[str, CurveAnalysis]]], columns: int = 3, title: str = ""
) -> Figure:
    """Learned one-argument activations, one panel per key (a condition), one line per labelled curve (a run), ReLU
    dashed; each curve's central input interval (where its inputs lie) shaded; ``title`` above the panels."""
    if not panels:
        raise ValueError("the activation figure needs at least one panel")
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.6 * columns, 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (panel, curves) in zip(axes, panels.items()):
        for label, curve in curves:
            (line,) = ax.plot(curve.x, curve.values, label=label, linewidth=1)
            if curve.interval is not None:
                ax.axvspan(*curve.interval, color=line.get_color(), alpha=0.08)
        if curves:
            x = curves[0][1].x
            ax.plot(x, np.maximum(x, 0), color="black", linestyle="dashed", linewidth=0.8, label="ReLU")
        ax.set(xlabel="input", ylabel="activation")
        ax.set_title(panel, fontsize=9)
        ax.legend(fontsize=6)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def panel_colours(conditions: Sequence[str]) -> dict[str, str]:
    """Distinct colours for the conditions drawn in one panel, in sorted order (the same neuron gets the same colour
    in every net's panel when conditions are named ``<net>_<data>_<neuron>``)."""
    return {condition: f"C{index % 10}" for index, condition in enumerate(sorted(conditions))}


def group_by_panel(conditions: Sequence[str], panels: Mapping[str, str] | None) -> dict[str, list[str]]:
    """``{panel title: its conditions}`` in sorted order; ``panels`` maps a condition to its panel (e.g. its data set
    and net), a condition it does not name gets a panel of its own, and without it every condition shares one."""
    grouped: dict[str, list[str]] = {}
    for condition in sorted(conditions):
        title = "" if panels is None else panels.get(condition, condition)
        grouped.setdefault(title, []).append(condition)
    return dict(sorted(grouped.items()))


def learning_curve_figure(
    curves: pd.DataFrame,
    offsets: pd.DataFrame,
    panels: Mapping[str, str] | None = None,
    tags: Sequence[str] | None = None,
) -> Figure:
    """Mean ± sd over runs of each tag against epoch: a row per tag, a column per net (``panels``: condition ->
    panel title, e.g. from :func:`~lit_dendrite.analysis.tables.net_panels`; default one column). Session II solid,
    session III dashed after its condition's labelled boundary; accuracy in %, bands clipped to [0, 100]."""
    tags = list(tags or curves["tag"].unique())
    grouped = group_by_panel(curves["condition"].unique(), panels)
    figure = Figure(figsize=(5.2 * len(grouped), 3.4 * len(tags) + 0.6), layout="constrained")
    axes = figure.subplots(len(tags), len(grouped), squeeze=False, sharex="col")
    runs = curves.groupby("condition")["n"].max()
    for column, (title, conditions) in enumerate(grouped.items()):
        colours = panel_colours(conditions)
        for row, tag in enumerate(tags):
            ax = axes[row, column]
            scale = 100.0 if tag in PERCENT_TAGS else 1.0
            of_tag = curves[curves["tag"] == tag]
            for condition in conditions:
                for session, style in ((JOINT, "-"), (FROZEN, "--")):
                    part = of_tag[(of_tag["condition"] == condition) & (of_tag["session"] == session)]
                    if part.empty:
                        continue
                    mean, sd = scale * part["mean"].to_numpy(), scale * part["sd"].fillna(0).to_numpy()
                    label = f"{condition} (n={runs[condition]})" if session == JOINT else None
                    ax.plot(part["x"], mean, style, color=colours[condition], label=label, linewidth=1.3)
                    upper = np.minimum(mean + sd, 100.0) if tag in PERCENT_TAGS else mean + sd
                    ax.fill_between(part["x"], np.maximum(mean - sd, 0.0), upper, color=colours[condition], alpha=0.15)
            for boundary, starting in _session_three_starts(of_tag, offsets, conditions).items():
                colour = colours[starting[0]] if len(starting) == 1 else "dimgrey"
                ax.axvline(boundary, color=colour, linestyle=":", linewidth=1.2)
                ax.annotate(
                    " session III →",
                    (boundary, 1),
                    xycoords=("data", "axes fraction"),
                    va="top",
                    ha="left",
                    fontsize=7,
                    color=colour,
                )
            ax.set_ylim(0, 100 if tag in PERCENT_TAGS else None)
            ax.set_ylabel(TAG_LABELS.get(tag, tag))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(title or "all conditions", fontsize=10)
                ax.legend(fontsize=7, loc="best")
            if row == len(tags) - 1:
                ax.set_xlabel("epoch: session II, then session III")
    styles = [
        Line2D([], [], color="grey", linestyle="-", label=SESSION_NAMES[JOINT]),
        Line2D([], [], color="grey", linestyle="--", label=SESSION_NAMES[FROZEN]),
        Line2D([], [], color="grey", linestyle=":", label="where session III starts"),
        Patch(color="grey", alpha=0.15, label="band: ± sd over runs"),
    ]
    figure.legend(handles=styles, loc="outside lower center", ncols=min(4, 2 * len(grouped)), fontsize=8)
    figure.suptitle(f"Learning curves, {SD_OVER_RUNS} (n runs per condition)", fontsize=11)
    return figure


def _session_three_starts(curves: pd.DataFrame, offsets: pd.DataFrame, conditions: Sequence[str]) -> dict:
    """``{x where session III starts: the conditions starting it there}`` (a dotted line each) among ``conditions``
    that have a session III in ``curves``."""
    starts: dict[float, list[str]] = {}
    for condition in conditions:
        if curves[(curves["condition"] == condition) & (curves["session"] == FROZEN)].empty:
            continue
        start = offsets[(offsets["condition"] == condition) & (offsets["session"] == FROZEN)]["offset"]
        starts.setdefault(float(start.iloc[0]) - 0.5, []).append(condition)
    return starts


def speed_figure(speed_summary: pd.DataFrame) -> Figure:
    """Bars of mean ± sd over runs of the epochs to reach 95% / 99% of the final validation accuracy, per condition
    and session."""
    measures = sorted(c[: -len("_mean")] for c in speed_summary.columns if c.endswith("_mean"))
    labels = [
        f"{row.condition}\n{SESSION_NAMES.get(row.session, row.session).split(':')[0]}"
        for row in speed_summary.itertuples()
    ]
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
            label=f"to {measure.removeprefix('epochs_to_')}% of the session's final accuracy",
            capsize=3,
        )
    ax.set_xticks(positions + width * (len(measures) - 1) / 2, labels, fontsize=7, rotation=30, ha="right")
    ax.set(ylabel=f"epochs ({SD_OVER_RUNS})")
    figure.suptitle(
        "Learning speed: epochs until the validation accuracy first reaches\n95% / 99% of the session's final value",
        fontsize=10,
    )
    ax.yaxis.get_major_locator().set_params(integer=True)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8)
    return figure
