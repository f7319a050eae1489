"""Is a surface a soft XOR? Quadratic fit inside the input region, saddle verdict, angular harmonics, statistics.

The paper's criterion: inside the region holding 90% of the real input pairs, the least-squares quadratic
``f ~ c0 x^2 + c1 y^2 + c2 xy + c3 x + c4 y + c5`` is a saddle, ``4 c0 c1 - c2^2 < 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binomtest
from torch import nn

from lit_dendrite.analysis.surfaces import (
    PAPER_GRID,
    Grid,
    Region,
    Surface,
    collect_input_pairs,
    density_region,
    evaluate_surface,
    pixel_batches,
    surface_inner_nets,
)
from lit_dendrite.nn.inner import InnerNet

QUADRATIC_TERMS = ("x^2", "y^2", "xy", "x", "y", "1")


@dataclass(frozen=True)
class QuadraticFit:
    """Coefficients ``c0..c5`` of :data:`QUADRATIC_TERMS` and the fit's R^2 on the region's grid points.

    ``linear_r_squared`` is the R^2 of the best plane: a small gain ``r_squared - linear_r_squared`` means the
    surface is nearly planar there and its saddle verdict rests on little curvature. ``curvature_scale`` is the
    curvature that would explain the surface's spread over the region; a fit whose curvature is below a
    millionth of it is planar and not a saddle.
    """

    coefficients: np.ndarray
    r_squared: float
    linear_r_squared: float
    curvature_scale: float

    @property
    def discriminant(self) -> float:
        """``4 c0 c1 - c2^2``: negative for a saddle (XOR-like), positive for a bowl or a dome."""
        c0, c1, c2 = self.coefficients[:3]
        return float(4 * c0 * c1 - c2**2)

    @property
    def is_saddle(self) -> bool:
        return self.discriminant < -((1e-6 * self.curvature_scale) ** 2)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _quadratic_design(np.asarray(x), np.asarray(y)) @ self.coefficients


def _quadratic_design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([x**2, y**2, x * y, x, y, np.ones_like(x)], axis=-1)


def _check_same_grid(surface: Surface, region: Region) -> None:
    if surface.grid != region.grid:
        raise ValueError(f"surface grid {surface.grid} differs from region grid {region.grid}; use one Grid")


def fit_quadratic(surface: Surface, region: Region) -> QuadraticFit:
    """Least-squares quadratic fit of the surface on the grid points inside the region."""
    _check_same_grid(surface, region)
    x, y = surface.grid.mesh()
    design = _quadratic_design(x[region.mask], y[region.mask])
    target = surface.values[region.mask]
    if len(target) < design.shape[1]:
        raise ValueError(f"the region covers {len(target)} grid points, too few for a 6-term fit; use a finer Grid")
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    linear, *_ = np.linalg.lstsq(design[:, 3:], target, rcond=None)
    spread = np.mean((x[region.mask] - x[region.mask].mean()) ** 2 + (y[region.mask] - y[region.mask].mean()) ** 2)
    return QuadraticFit(
        coefficients,
        _r_squared(target, design @ coefficients),
        _r_squared(target, design[:, 3:] @ linear),
        float(np.std(target) / spread),
    )


def _r_squared(target: np.ndarray, prediction: np.ndarray) -> float:
    total = np.sum((target - target.mean()) ** 2)
    return 1.0 - float(np.sum((target - prediction) ** 2) / total) if total > 0 else 1.0


@dataclass(frozen=True)
class HarmonicPower:
    """Angular harmonic power ``power[l]`` (l = 0..lmax) and its share of the centred surface's total power."""

    power: np.ndarray
    fraction: np.ndarray

    @property
    def dominant(self) -> int:
        return int(np.argmax(self.power))


def angular_power(
    surface: Surface, region: Region, lmax: int = 4, ring_width: float = 0.25, coverage: float = 0.9
) -> HarmonicPower:
    """Angular harmonic power of the centred surface in the largest disc around the region's centre it covers.

    The grid is cut into rings of ``ring_width`` around the region's centre; rings are taken outwards while at
    least ``coverage`` of each ring's grid points lie in the region (full turns keep harmonics orthogonal).
    On each ring the surface minus its mean over the disc is fitted by least squares with ``cos(l t), sin(l t)``,
    l <= ``lmax``; ``power[l]`` sums the squared amplitudes over rings, weighted by their point counts.
    x*y and x^2-y^2 are pure l = 2, x+y is l = 1 and x^2+y^2 is l = 0.
    """
    _check_same_grid(surface, region)
    x, y = surface.grid.mesh()
    cx, cy = region.centre
    radius, angle = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
    ring = np.floor(radius / ring_width).astype(int)
    rings = 0
    while (ring == rings).any() and region.mask[ring == rings].mean() >= coverage:
        rings += 1
    disc = region.mask & (ring < rings)
    if disc.sum() < 2 * (2 * lmax + 1):
        raise ValueError(
            f"the region covers too few full rings around its centre ({disc.sum()} grid points); use a finer Grid"
        )
    values, angle, ring = surface.values[disc] - surface.values[disc].mean(), angle[disc], ring[disc]
    columns = [np.ones_like(angle)]
    for order in range(1, lmax + 1):
        columns += [np.cos(order * angle), np.sin(order * angle)]
    design = np.stack(columns, axis=-1)
    power = np.zeros(lmax + 1)
    for index in range(rings):
        members = ring == index
        coefficients, *_ = np.linalg.lstsq(design[members], values[members], rcond=None)
        # mean square over a full turn: a0^2 for l = 0, (a^2 + b^2) / 2 for a cos(l t) + b sin(l t)
        cosines, sines = coefficients[1::2], coefficients[2::2]
        power += members.sum() * np.concatenate([[coefficients[0] ** 2], (cosines**2 + sines**2) / 2])
    total = float(values @ values)
    fraction = power / total if total > 0 else np.zeros_like(power)
    return HarmonicPower(power, fraction)


@dataclass(frozen=True)
class SaddleStatistics:
    """How many of ``n`` surfaces are saddles, and the two-sided binomial test against a fair coin."""

    n: int
    saddles: int
    p_value: float

    @property
    def fraction(self) -> float:
        return self.saddles / self.n


def saddle_statistics(is_saddle: Sequence[bool]) -> SaddleStatistics:
    """Fraction of saddles across runs with a two-sided binomial test of ``P(saddle) = 0.5``."""
    verdicts = [bool(v) for v in is_saddle]
    if not verdicts:
        raise ValueError("saddle statistics need at least one surface verdict")
    saddles = sum(verdicts)
    return SaddleStatistics(len(verdicts), saddles, float(binomtest(saddles, len(verdicts), 0.5).pvalue))


@dataclass(frozen=True)
class XorAnalysis:
    """Everything the XOR question needs for one surface."""

    surface: Surface
    region: Region
    fit: QuadraticFit
    harmonics: HarmonicPower


def analyse_xor(surface: Surface, region: Region, lmax: int = 4) -> XorAnalysis:
    """Quadratic fit and angular harmonics of ``surface`` inside ``region``."""
    return XorAnalysis(surface, region, fit_quadratic(surface, region), angular_power(surface, region, lmax))


@dataclass(frozen=True)
class NetAnalysis:
    """A net's XOR analysis in the region of all layers' input pairs pooled, and the quadratic fit (the saddle
    verdict) in each layer's own region, by layer name in forward order; a layer whose region is too small to fit
    holds the ``ValueError`` why."""

    pooled: XorAnalysis
    layers: dict[str, QuadraticFit | ValueError]


def analyse_inner_nets(
    net: nn.Module, images: np.ndarray, grid: Grid = PAPER_GRID, max_pairs: int = 50_000, seed: int = 0
) -> dict[str, NetAnalysis]:
    """The XOR analysis of each two-argument inner net of a trained net (one shared net, or one per cell type; see
    :func:`~lit_dendrite.analysis.surfaces.surface_inner_nets`), pooled over the layers that evaluate it and per
    layer, from the input pairs they see on ``images`` (uint8 (N, H, W, C), as
    :func:`lit_dendrite.data.datasets.load_arrays` returns them)."""
    inner_nets = surface_inner_nets(net)
    if not inner_nets:
        raise ValueError(
            f"{type(net).__name__} has no two-argument inner net; surfaces exist for neurons whose analysis is the "
            "surface (2arg, celltypes)"
        )
    pairs = collect_input_pairs(net, pixel_batches(images), max_pairs=max_pairs, seed=seed)
    analyses = {}
    for name, (inner, neurons) in inner_nets.items():
        was_training = inner.training
        inner.eval()
        surface = evaluate_surface(inner, grid)
        inner.train(was_training)
        pooled = analyse_xor(surface, density_region(np.concatenate([pairs[n] for n in neurons]), grid))
        layers: dict[str, QuadraticFit | ValueError] = {}
        for neuron in neurons:
            try:
                layers[neuron] = fit_quadratic(surface, density_region(pairs[neuron], grid))
            except ValueError as error:
                layers[neuron] = error
        analyses[name] = NetAnalysis(pooled, layers)
    return analyses


def analyse_layers(
    net: nn.Module, images: np.ndarray, grid: Grid = PAPER_GRID, max_pairs: int = 50_000, seed: int = 0
) -> NetAnalysis:
    """The XOR analysis of a trained net's one shared inner net (see :func:`analyse_inner_nets`, which a net of
    several cell types needs): the surface is the same in every layer; only the region differs."""
    analyses = analyse_inner_nets(net, images, grid, max_pairs, seed)
    if len(analyses) != 1:
        raise ValueError(
            f"{type(net).__name__} has {len(analyses)} inner nets ({', '.join(analyses)}); use analyse_inner_nets"
        )
    return next(iter(analyses.values()))


def analyse_net(
    net: nn.Module, images: np.ndarray, grid: Grid = PAPER_GRID, max_pairs: int = 50_000, seed: int = 0
) -> XorAnalysis:
    """The XOR analysis of a trained net's inner net, its region taken from the pairs all layers see on ``images``
    (see :func:`analyse_layers`)."""
    return analyse_layers(net, images, grid, max_pairs, seed).pooled


def initial_surfaces(
    grid: Grid = PAPER_GRID, hidden: Sequence[int] = (64, 64), nets: int = 20, seed: int = 0
) -> list[Surface]:
    """Surfaces of ``nets`` Xavier-initialised two-argument inner nets: the untrained baseline for harmonics."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return [evaluate_surface(InnerNet(2, hidden), grid) for _ in range(nets)]
