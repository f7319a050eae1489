"""Two-argument surfaces: the inner net on a grid, the real input pairs that reach it, and their 90% region.

A surface's values are indexed ``values[iy, ix]`` (rows follow y), as ``matplotlib.imshow(origin="lower")``
expects. The density region lives on the same grid: one histogram bin per grid point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from lit_dendrite.data.datasets import pixels
from lit_dendrite.nn.neurons import SharedNeuron, analysed_module, learned_neurons


@dataclass(frozen=True)
class Grid:
    """A square grid of ``points`` x ``points`` over ``[low, high]^2`` (default: the paper's 101x101 on [-5,5])."""

    low: float = -5.0
    high: float = 5.0
    points: int = 101

    def __post_init__(self) -> None:
        if not self.high > self.low or self.points < 2:
            raise ValueError(f"a grid needs high > low and at least 2 points, got {self}")

    @property
    def axis(self) -> np.ndarray:
        return np.linspace(self.low, self.high, self.points)

    @property
    def step(self) -> float:
        return (self.high - self.low) / (self.points - 1)

    @property
    def edges(self) -> np.ndarray:
        """Histogram bin edges, one bin centred on each grid point."""
        return np.linspace(self.low - self.step / 2, self.high + self.step / 2, self.points + 1)

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(x, y)`` of every grid point, each of shape (points, points), indexed ``[iy, ix]``."""
        return np.meshgrid(self.axis, self.axis, indexing="xy")


PAPER_GRID = Grid()
"""The paper's 101 x 101 grid over [-5, 5]^2 (0.1 apart)."""


@dataclass(frozen=True)
class Surface:
    """Values of a two-argument function on a grid, ``values[iy, ix] = f(x[ix], y[iy])``."""

    grid: Grid
    values: np.ndarray


@dataclass(frozen=True)
class Region:
    """Grid points of the highest-density region holding ``mass`` of the input pairs, and that density."""

    grid: Grid
    mask: np.ndarray
    density: np.ndarray
    mass: float

    @property
    def area(self) -> float:
        return float(self.mask.sum()) * self.grid.step**2

    @property
    def centre(self) -> tuple[float, float]:
        """Density-weighted centre of the region."""
        x, y = self.grid.mesh()
        weights = np.where(self.mask, self.density, 0.0)
        return float((x * weights).sum() / weights.sum()), float((y * weights).sum() / weights.sum())


@torch.no_grad()
def evaluate_surface(fn: Callable[[torch.Tensor], torch.Tensor], grid: Grid = PAPER_GRID) -> Surface:
    """Evaluate an inner net (or any function of a last dimension of size 2) on every point of ``grid``."""
    if getattr(fn, "arity", 2) != 2:
        raise ValueError(f"surfaces need a two-argument inner net, got arity {fn.arity}")
    x, y = grid.mesh()
    points = torch.from_numpy(np.stack([x, y], axis=-1))
    if isinstance(fn, nn.Module):
        parameter = next(fn.parameters(), None)
        if parameter is not None:
            points = points.to(device=parameter.device, dtype=parameter.dtype)
    values = fn(points)
    if tuple(values.shape) != x.shape:
        raise ValueError(f"the function must map (..., 2) to (...), got output shape {tuple(values.shape)}")
    return Surface(grid, values.detach().cpu().double().numpy())


def surface_module(module: nn.Module) -> nn.Module | None:
    """The shared two-argument module (``net.inner``) of the outer net in ``module`` if its neuron's analysis is the
    surface (see :class:`~lit_dendrite.nn.neurons.NeuronSpec`), else None."""
    return analysed_module(module, "surface")


def surface_inner_nets(module: nn.Module) -> dict[str, tuple[nn.Module, list[str]]]:
    """The two-argument inner nets whose surfaces the analysis draws, by module name in ``module`` (``inner`` for the
    paper's one shared net; ``inner.types.<k>`` for cell type k), each with the names of the learned neurons that
    evaluate it (the region of its input pairs), in forward order; empty unless the surface is the analysis of the
    net's neuron."""
    if surface_module(module) is None:
        return {}
    names = {id(m): name for name, m in module.named_modules()}
    inner_nets: dict[str, tuple[nn.Module, list[str]]] = {}
    for name, neuron in learned_neurons(module).items():
        inner_nets.setdefault(names[id(neuron.inner)], (neuron.inner, []))[1].append(name)
    return inner_nets


class _BottomKSample:
    """A uniform sample without replacement of at most ``k`` rows from a stream: keep the k smallest random keys."""

    def __init__(self, k: int, generator: torch.Generator) -> None:
        self.k, self.generator = k, generator
        self.keys = torch.empty(0)
        self.rows: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        keys = torch.rand(len(rows), generator=self.generator)
        rows = rows.cpu().float()
        if self.rows is not None:
            keys, rows = torch.cat([self.keys, keys]), torch.cat([self.rows, rows])
        if len(keys) > self.k:
            keys, order = torch.topk(keys, self.k, largest=False)
            rows = rows[order]
        self.keys, self.rows = keys, rows


def pixel_batches(images: np.ndarray, batch_size: int = 250) -> Iterable[torch.Tensor]:
    """uint8 images (N, H, W, C) as float batches (n, C, H, W) of pixels in [0, 1], the nets' input."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C) as load_arrays returns, got {images.dtype} {images.shape}")
    for start in range(0, len(images), batch_size):
        yield pixels(images[start : start + batch_size])


@torch.no_grad()
def collect_input_pairs(
    net: nn.Module,
    batches: Iterable[torch.Tensor],
    layers: Sequence[str] | None = None,
    max_pairs: int = 100_000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Run ``batches`` through ``net`` (eval mode) and return, per learned-neuron layer, the input groups it saw.

    Each value has shape (n, arity) with n <= ``max_pairs``, sampled uniformly from all groups the layer saw.
    ``layers`` names the learned neurons to watch (see :func:`learned_neurons`); default: all of them.
    """
    neurons = learned_neurons(net)
    if not neurons:
        raise ValueError(f"{type(net).__name__} has no learned neurons (SharedNeuron), so no inner-net inputs")
    chosen = list(neurons) if layers is None else list(layers)
    unknown = [name for name in chosen if name not in neurons]
    if unknown:
        raise ValueError(f"unknown learned-neuron layers {unknown}; this net has {list(neurons)}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be positive, got {max_pairs}")
    generator = torch.Generator().manual_seed(seed)
    samples = {name: _BottomKSample(max_pairs, generator) for name in chosen}

    def hook_for(name: str) -> Callable:
        def hook(module: SharedNeuron, args: tuple, kwargs: dict) -> None:
            x = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else -1)
            samples[name].add(x.detach().movedim(dim, -1).reshape(-1, module.arity))

        return hook

    handles = [neurons[name].register_forward_pre_hook(hook_for(name), with_kwargs=True) for name in chosen]
    was_training = net.training
    device = next(net.parameters()).device
    net.eval()
    try:
        for batch in batches:
            net(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    empty = [name for name, sample in samples.items() if sample.rows is None]
    if empty:
        raise ValueError(f"no data reached layers {empty}; pass at least one batch")
    return {name: sample.rows.numpy() for name, sample in samples.items()}


def density_region(pairs: np.ndarray, grid: Grid = PAPER_GRID, mass: float = 0.9, smoothing: float = 0.1) -> Region:
    """The highest-density region holding ``mass`` of the input ``pairs`` (n, 2).

    Histogram with one bin per grid point (0.1 wide on the default grid), Gaussian smoothing of
    ``smoothing`` input units, then the densest bins until their share of all pairs reaches ``mass``.
    """
    pairs = np.asarray(pairs, dtype=float)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(f"input pairs must have shape (n, 2) with n > 0, got {pairs.shape}")
    if not 0 < mass < 1:
        raise ValueError(f"mass must lie in (0, 1), got {mass}")
    edges = grid.edges
    counts, _, _ = np.histogram2d(pairs[:, 1], pairs[:, 0], bins=(edges, edges))
    density = gaussian_filter(counts, smoothing / grid.step, mode="constant") / len(pairs)
    order = np.argsort(density, axis=None)[::-1]
    cumulative = np.cumsum(density.ravel()[order])
    if cumulative[-1] < mass:
        raise ValueError(
            f"only {cumulative[-1]:.1%} of the input pairs lie on the grid [{grid.low}, {grid.high}]^2, "
            f"less than the {mass:.0%} the region must hold; use a wider Grid"
        )
    count = int(np.searchsorted(cumulative, mass)) + 1
    mask = np.zeros(density.size, dtype=bool)
    mask[order[:count]] = True
    return Region(grid, mask.reshape(density.shape), density, mass)
