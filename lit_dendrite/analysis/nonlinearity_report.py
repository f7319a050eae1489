"""The report's sections on what the neurons learned: each run's inner-net surfaces with the soft-XOR statistics
(pooled and per layer, one row per cell type), and the learned one-argument activations (``1arg``, ``pau``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lit_dendrite.analysis import plots
from lit_dendrite.analysis.activations import CurveAnalysis, analyse_curve
from lit_dendrite.analysis.paper import authors_layer, paper_numbers, published_saddle
from lit_dendrite.analysis.surfaces import PAPER_GRID, Grid, Surface, surface_module
from lit_dendrite.analysis.tables import markdown_table, slug
from lit_dendrite.analysis.xor import (
    QuadraticFit,
    XorAnalysis,
    analyse_inner_nets,
    angular_power,
    initial_surfaces,
    saddle_statistics,
)
from lit_dendrite.nn.neurons import NEURONS
from lit_dendrite.runs import RunRecord, UntrustedRecord

SURFACE_IMAGES = 10_000  # test images whose input pairs define the surface regions (the paper: the test set)
ACTIVATIONS_FIGURE = "learned_activations.png"


def surfaces_figure_name(condition: str) -> str:
    """The file of a condition's surface gallery."""
    return f"inner_net_surfaces_{slug(condition)}.png"


@lru_cache(maxsize=4)
def _test_images(dataset: str, root: str) -> np.ndarray:
    from lit_dendrite.data.datasets import load_arrays

    return load_arrays(dataset, root, train=False)[0]


def run_test_images(run: RunRecord, n_images: int = SURFACE_IMAGES) -> np.ndarray:
    """The first ``n_images`` test images (uint8, N x H x W x C) of the run's data set, from its data root."""
    return _test_images(run.dataset, str(run.data_root))[:n_images]


def neuron_analysis(neuron: str | None) -> str | None:
    """The analysis a run's neuron gets (its registry entry's ``analysis``); None for a name not registered here."""
    spec = NEURONS.get(neuron) if isinstance(neuron, str) else None
    return None if spec is None else spec.analysis


@dataclass(frozen=True)
class RunSurface:
    """The XOR analysis of one of a run's inner nets (pooled over layers, and per layer) and the mean l = 2 power
    share of Xavier-initialised inner nets on its pooled region; ``inner`` names that inner net where the run has
    several (``inner.types.<k>``: cell type k), else None."""

    run: RunRecord
    analysis: XorAnalysis
    layers: dict[str, QuadraticFit | ValueError]
    initial_l2: float
    inner: str | None = None

    @property
    def condition(self) -> str:
        """The run's condition, and with several inner nets the one analysed: the rows of the surface tables."""
        return self.run.condition if self.inner is None else f"{self.run.condition} {self.inner}"


def analyse_surfaces(
    runs: Sequence[RunRecord], grid: Grid = PAPER_GRID, n_images: int = SURFACE_IMAGES
) -> tuple[list[RunSurface], list[str]]:
    """Load every finished run whose neuron's analysis is the surface (2arg, celltypes) and analyse each of its
    inner nets' surfaces on test data (one per cell type); failures come back as messages."""
    from lit_dendrite.models import load_net

    surfaces, problems = [], []
    baselines: dict[tuple[int, ...], list[Surface]] = {}
    for run in runs:
        if not run.done or neuron_analysis(run.neuron) != "surface":
            continue
        try:
            net = load_net(run.dir.path)
            analyses = analyse_inner_nets(net, run_test_images(run, n_images), grid)
        except UntrustedRecord:  # never reported as one run's problem: the caller must stop
            raise
        except Exception as error:  # a broken run must not hide the others
            problems.append(f"`{run.name}`: surface analysis failed: {type(error).__name__}: {error}")
            continue
        hidden = surface_module(net).hidden
        if hidden not in baselines:
            baselines[hidden] = initial_surfaces(grid, hidden)
        for name, inner_analysis in analyses.items():
            analysis = inner_analysis.pooled
            initial = np.mean([angular_power(s, analysis.region).fraction[2] for s in baselines[hidden]])
            inner = name if len(analyses) > 1 else None
            surfaces.append(RunSurface(run, analysis, inner_analysis.layers, float(initial), inner))
    return surfaces, problems


ALL_TYPES = "all types"


def surface_statistics(surfaces: Sequence[RunSurface]) -> pd.DataFrame:
    """Per condition: saddles out of n, their fraction, the binomial p, mean R^2 and l = 2 power shares; a net of
    several cell types has a row per type and one pooling its types (``<condition> all types``)."""
    groups: dict[str, list[RunSurface]] = {}
    for surface in surfaces:
        groups.setdefault(surface.condition, []).append(surface)
        if surface.inner is not None:
            groups.setdefault(f"{surface.run.condition} {ALL_TYPES}", []).append(surface)
    rows = []
    for condition, group in sorted(groups.items()):
        stats = saddle_statistics([s.analysis.fit.is_saddle for s in group])
        rows.append(
            {
                "condition": condition,
                "saddles": f"{stats.saddles}/{stats.n}",
                "fraction": stats.fraction,
                "binomial_p": stats.p_value,
                "mean_R2": float(np.mean([s.analysis.fit.r_squared for s in group])),
                "mean_R2_gain": float(
                    np.mean([s.analysis.fit.r_squared - s.analysis.fit.linear_r_squared for s in group])
                ),
                "l2_power": float(np.mean([s.analysis.harmonics.fraction[2] for s in group])),
                "l2_power_xavier": float(np.mean([s.initial_l2 for s in group])),
            }
        )
    return pd.DataFrame(rows)


def layer_statistics(surfaces: Sequence[RunSurface]) -> pd.DataFrame:
    """Per condition and learned-neuron layer (1-based, in forward order): saddles out of n, their fraction and
    the binomial p, with the paper's published fraction and p beside the layer the authors analysed."""
    rows = []
    for condition in sorted({s.condition for s in surfaces}):
        group = [s for s in surfaces if s.condition == condition]
        net = group[0].run.net
        names = list(group[0].layers)
        published = published_saddle(net) if group[0].inner is None else None  # the paper had one inner net
        for index, name in enumerate(names, start=1):
            fits = [s.layers[name] for s in group if isinstance(s.layers.get(name), QuadraticFit)]
            if not fits:
                continue
            stats = saddle_statistics([fit.is_saddle for fit in fits])
            authors = index == authors_layer(net)
            rows.append(
                {
                    "condition": condition,
                    "layer": f"{index} ({name})" + (" authors'" if authors else ""),
                    "saddles": f"{stats.saddles}/{stats.n}",
                    "fraction": stats.fraction,
                    "binomial_p": stats.p_value,
                    "mean_R2_gain": float(np.mean([fit.r_squared - fit.linear_r_squared for fit in fits])),
                    "paper fraction": published["fraction"] if authors and published else np.nan,
                    "paper p": published["binomial_p"] if authors and published else np.nan,
                }
            )
    return pd.DataFrame(rows)


def gallery(surfaces: Sequence[RunSurface], condition: str) -> Figure:
    """The surface gallery of one condition, panels labelled by run name."""
    chosen = [(s.run.name.split("/")[-1], s.analysis) for s in surfaces if s.condition == condition]
    return plots.surface_gallery(chosen, title=condition)


def surface_numbers(surface: RunSurface) -> dict[str, Any]:
    """One inner net's per-run numbers for ``summary.csv``: the saddle verdict pooled and per layer, the fit's R² and
    the best plane's, the l = 2 power shares; columns ``surface.<what>`` (``surface[<inner>].<what>`` for one of
    several inner nets, as in the tables' rows)."""
    prefix = "surface" if surface.inner is None else f"surface[{surface.inner}]"
    fit, harmonics = surface.analysis.fit, surface.analysis.harmonics
    numbers = {
        f"{prefix}.saddle": fit.is_saddle,
        f"{prefix}.r_squared": fit.r_squared,
        f"{prefix}.r_squared_plane": fit.linear_r_squared,
        f"{prefix}.l2_power": float(harmonics.fraction[2]),
        f"{prefix}.l2_power_xavier": surface.initial_l2,
    }
    for layer, layer_fit in surface.layers.items():
        verdict = layer_fit.is_saddle if isinstance(layer_fit, QuadraticFit) else None
        numbers[f"{prefix}.saddle.{layer}"] = verdict
    return numbers


def surface_section(
    sweep_dir: Path,
    runs: Sequence[RunRecord],
    problems: list[str],
    grid: Grid,
    n_images: int,
    per_run: dict[str, dict[str, Any]],
) -> list[str]:
    lines = ["## Inner-net surfaces: soft XOR?", ""]
    surfaces, failures = analyse_surfaces(runs, grid, n_images)
    problems += failures
    for surface in surfaces:
        per_run.setdefault(surface.run.name, {}).update(surface_numbers(surface))
    if not surfaces:
        return [*lines, "No finished run with a two-argument inner net (such as neuron `2arg`) could be analysed."]
    images = sorted({len(run_test_images(s.run, n_images)) for s in surfaces})
    lines += [
        "Each panel: the trained inner net on the grid (one colour scale per gallery, centred on 0), the black "
        "outline enclosing the region that holds 90% of "
        f"the input pairs reaching it (all layers) on {' / '.join(map(str, images))} test images. Inside the region "
        "a least-squares quadratic c0 x² + c1 y² + c2 xy + c3 x + c4 y + c5 is fitted; a saddle (4 c0 c1 − c2² < 0) "
        "is a soft XOR. R2 gain: the quadratic fit's R² minus the best plane's (near 0: a nearly planar surface, "
        "whose saddle verdict rests on little curvature). p: two-sided binomial test of P(saddle) = 0.5 "
        "(scipy.stats.binomtest). l=2 power: share of the centred surface's power in the second angular harmonic, "
        "trained vs 20 Xavier-initialised inner nets on the same regions. A net of several cell types has one row "
        "per type (`inner.types.<k>`: type k's inner net, its region from the pairs reaching that type's units) and "
        f"one pooling its types (`{ALL_TYPES}`: every type of every run, counted as independent surfaces). Per run "
        "in `summary.csv`: `surface.saddle` (and per layer `surface.saddle.<layer>`), `surface.r_squared`, "
        "`surface.r_squared_plane`, `surface.l2_power`, `surface.l2_power_xavier` (`surface[inner.types.<k>]...` "
        "per cell type).",
        "",
    ]
    formats = {"fraction": ".2f", "binomial_p": ".3g", "l2_power": ".3f", "l2_power_xavier": ".3f"}
    formats |= {"mean_R2": ".3f", "mean_R2_gain": ".3f", "paper fraction": ".2f", "paper p": ".3g"}
    table = surface_statistics(surfaces)
    lines += [markdown_table(table, formats), ""]
    by_layer = layer_statistics(surfaces)
    if not by_layer.empty:
        lines += [
            "### Per layer",
            "",
            "The same verdicts with the region taken from one learned-neuron layer's input pairs only (the surface "
            "is the same: one inner net serves every layer, or every layer's units of one cell type); `authors'` "
            "marks the layer the authors analysed, "
            "with the paper's published fraction and p beside it (as published; "
            f"{paper_numbers()['source']}).",
            "",
            markdown_table(by_layer, formats),
            "",
        ]
        failed = sorted(
            f"`{s.run.name}` {name}" for s in surfaces for name, a in s.layers.items() if isinstance(a, ValueError)
        )
        if failed:
            lines += [f"No per-layer verdict (region too small): {', '.join(failed)}.", ""]
    for condition in table["condition"]:
        if condition.endswith(ALL_TYPES):  # its types have their own galleries
            continue
        image = surfaces_figure_name(condition)
        plots.save_figure(gallery(surfaces, condition), sweep_dir / image)
        lines += [f"### {condition}", "", f"![surfaces of {condition}]({image})", ""]
    return lines


def analyse_curves(
    runs: Sequence[RunRecord], n_images: int = SURFACE_IMAGES
) -> tuple[dict[str, list[tuple[str, CurveAnalysis]]], list[str]]:
    """Every finished run whose neuron's analysis is the curve (``1arg``, ``pau``): its activation and input interval
    on test data, by condition and run name; failures come back as messages."""
    from lit_dendrite.models import load_net

    curves: dict[str, list[tuple[str, CurveAnalysis]]] = {}
    problems = []
    for run in runs:
        if not run.done or neuron_analysis(run.neuron) != "curve":
            continue
        try:
            analysis = analyse_curve(load_net(run.dir.path), run_test_images(run, n_images))
        except UntrustedRecord:  # never reported as one run's problem: the caller must stop
            raise
        except Exception as error:  # a broken run must not hide the others
            problems.append(f"`{run.name}`: activation analysis failed: {type(error).__name__}: {error}")
            continue
        curves.setdefault(run.condition, []).append((run.name.split("/")[-1], analysis))
    return dict(sorted(curves.items())), problems


def curve_section(
    sweep_dir: Path, runs: Sequence[RunRecord], problems: list[str], n_images: int, per_run: dict[str, dict[str, Any]]
) -> list[str]:
    curves, failures = analyse_curves(runs, n_images)
    problems += failures
    if not curves:
        return []
    for run in runs:
        analysed = dict(curves.get(run.condition, [])).get(run.name.split("/")[-1])
        if analysed is not None:
            per_run.setdefault(run.name, {}).update(
                {
                    "activation.input_low": analysed.interval[0],
                    "activation.input_high": analysed.interval[1],
                    "activation.rms_from_relu": analysed.relu_rms,
                }
            )
    rows = [
        {
            "condition": condition,
            "n": len(group),
            "input_low": float(np.mean([c.interval[0] for _, c in group])),
            "input_high": float(np.mean([c.interval[1] for _, c in group])),
            "rms_from_relu": float(np.mean([c.relu_rms for _, c in group])),
        }
        for condition, group in curves.items()
    ]
    image = ACTIVATIONS_FIGURE
    title = "Learned one-argument activations, one line per run\n(shaded: where the central 90% of its inputs lie)"
    plots.save_figure(plots.activation_figure(curves, title=title), sweep_dir / image)
    formats = {"input_low": ".2f", "input_high": ".2f", "rms_from_relu": ".3f"}
    return [
        "## Learned one-argument activations",
        "",
        "The shared activation of each run whose neuron learns a one-argument function (`1arg`: the inner net; "
        "`pau`: a rational function initialised to ReLU), with ReLU dashed. input_low / input_high: the interval "
        f"holding the central 90% of the inputs all layers see on {n_images} test images at most (shaded per run); "
        "rms_from_relu: the activation's RMS distance from ReLU over those inputs. Means over runs.",
        "",
        markdown_table(pd.DataFrame(rows), formats),
        "",
        f"![learned activations]({image})",
        "",
    ]
