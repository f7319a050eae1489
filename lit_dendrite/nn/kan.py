"""Kolmogorov-Arnold layers: a learned B-spline function on every edge plus a base term ``w_b * SiLU(x)``.

Liu et al. 2024, "KAN: Kolmogorov-Arnold Networks" (arXiv:2404.19756), in the efficient form of the "efficient-kan"
implementation (github.com/Blealtan/efficient-kan): output ``j`` of a layer is
``sum_i w_b[j,i] * silu(x_i) + sum_i sum_k c[j,i,k] * B_k(x_i)``, where ``B_k`` are the ``grid + order`` B-spline
basis functions of degree ``order`` on a uniform grid (``grid`` intervals over ``GRID_RANGE``, extended by ``order``
knots on each side). Evaluating the basis once per input and concatenating it with ``silu(x)`` makes a layer one
matrix product (:class:`KANLinear`), and in a convolution one ``conv2d`` over the basis values as extra input channels
(:class:`KANConv2d`, the convolutional KAN of Bodner et al. 2024, arXiv:2406.13155: a KAN layer applied to every
patch, computed without unfolding the patches). Unlike efficient-kan there is no separate per-edge spline scale
(it only rescales ``c``: parameters without expressiveness, which would distort parameter matching) and no grid
update from data: the layers' inputs are LayerNorm-ed (:class:`KANDense`, :class:`KANConv`), so a fixed grid covers
them.

As a neuron of the registry, ``kan`` replaces each hidden layer's Linear + activation by a KAN layer (the Linear
readout stays, as for every neuron), in the MLP and, as KAN convolutions, in the CNN's conv layers: the comparison is
then learned activations against learned activations in every hidden layer, at the parameter count of the 2-arg net
(``match_neuron``); ReLU convolutions under KAN dense layers would compare a different architecture. Each KAN layer
LayerNorms its inputs (no affine), so every learned function sees LayerNorm-ed values, as in the dendritic layers.
Its functions are the layers' own weights, with no shared module to pretrain or freeze, so it runs session II only,
like the fixed-neuron controls. Options (``model.net.init_args.neuron_args``): ``grid``
(intervals, default 5) and ``order`` (spline degree, default 3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_dendrite.errors import ConfigError
from lit_dendrite.nn.neurons import LAYER_NORM_EPS, NET_CONFIG_KEY, NeuronSpec, max_pool_maps, register_neuron

GRID_RANGE = (-2.0, 2.0)
"""The interval the grid divides: inputs are LayerNorm-ed (mean 0, variance 1 per sample), so it holds about 95% of
them; beyond it the splines fade out over ``order`` further intervals and the SiLU term carries the edge."""
SPLINE_INIT_SCALE = 0.1
"""Initial spline coefficients are uniform in +-SPLINE_INIT_SCALE / (2 * grid): efficient-kan's ``scale_noise``, so a
fresh layer is close to its base term ``w_b * silu(x)``."""


def spline_knots(grid: int, order: int, low: float = GRID_RANGE[0], high: float = GRID_RANGE[1]) -> torch.Tensor:
    """The ``grid + 2 * order + 1`` uniform knots: ``grid`` intervals over [low, high] and ``order`` more each side."""
    if grid < 1 or order < 0:
        raise ConfigError(f"a KAN spline needs grid >= 1 and order >= 0, got grid={grid}, order={order}")
    step = (high - low) / grid
    return torch.arange(-order, grid + order + 1, dtype=torch.float64) * step + low


def bspline_basis(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """The B-spline basis functions of degree ``order`` on ``knots`` at every value of ``x``: shape ``(*x.shape,
    len(knots) - order - 1)``, by the Cox-de Boor recursion (each basis function is zero outside its knot span)."""
    x = x.unsqueeze(-1)
    knots = knots.to(x)
    bases = ((x >= knots[:-1]) & (x < knots[1:])).to(x.dtype)
    for degree in range(1, order + 1):
        left = (x - knots[: -(degree + 1)]) / (knots[degree:-1] - knots[: -(degree + 1)])
        right = (knots[degree + 1 :] - x) / (knots[degree + 1 :] - knots[1:-degree])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


class KANFeatures(nn.Module):
    """``x -> [silu(x), B_1(x), ..., B_{grid+order}(x)]`` along a new last dim: what every edge's function is linear
    in. ``features`` is that dim's size (``1 + grid + order``)."""

    def __init__(self, grid: int = 5, order: int = 3) -> None:
        super().__init__()
        self.grid, self.order = grid, order
        self.register_buffer("knots", spline_knots(grid, order).float(), persistent=False)
        self.features = 1 + grid + order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.silu(x).unsqueeze(-1), bspline_basis(x, self.knots, self.order)], dim=-1)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, order={self.order}, range={GRID_RANGE}"


def _init_edges(base_weight: torch.Tensor, spline_weight: torch.Tensor, grid: int) -> None:
    """Base weights as ``nn.Linear``/``nn.Conv2d`` initialise theirs (kaiming uniform, a=sqrt(5)); small random
    spline coefficients (see ``SPLINE_INIT_SCALE``)."""
    nn.init.kaiming_uniform_(base_weight, a=math.sqrt(5))
    bound = SPLINE_INIT_SCALE / (2 * grid)
    nn.init.uniform_(spline_weight, -bound, bound)


class KANLinear(nn.Module):
    """A KAN layer ``in_features -> out_features``: ``base_weight`` (out, in) and ``spline_weight`` (out, in,
    grid + order), evaluated as one matrix product of the features of every input."""

    def __init__(self, in_features: int, out_features: int, grid: int = 5, order: int = 3) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.features = KANFeatures(grid, order)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid + order))
        _init_edges(self.base_weight, self.spline_weight, grid)

    def weight(self) -> torch.Tensor:
        """The layer as one (out, in * features) matrix on the flattened features of the inputs."""
        return torch.cat([self.base_weight.unsqueeze(-1), self.spline_weight], dim=-1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(-2) @ self.weight().t()


class KANConv2d(nn.Module):
    """A convolutional KAN layer: every (output channel, input channel, kernel position) edge has its own function,
    summed over the patch; computed as one ``conv2d`` over ``in_channels * features`` channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, grid: int = 5, order: int = 3) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.features = KANFeatures(grid, order)
        self.base_weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.spline_weight = nn.Parameter(
            torch.empty(out_channels, in_channels, grid + order, kernel_size, kernel_size)
        )
        _init_edges(self.base_weight, self.spline_weight, grid)

    def weight(self) -> torch.Tensor:
        """The layer as one conv2d weight (out, in * features, k, k), channel ``i * features + f`` for feature f of
        input channel i."""
        return torch.cat([self.base_weight.unsqueeze(2), self.spline_weight], dim=2).flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) maps to (N, out, H - k + 1, W - k + 1), computed channels-last."""
        x = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (N, H, W, C), a free view
        features = self.features(x).flatten(-2).permute(0, 3, 1, 2)  # (N, C * features, H, W), channels-last
        return F.conv2d(features, self.weight())


class KANDense(nn.Module):
    """A dense hidden layer of ``units`` KAN outputs: LayerNorm (no affine) of the inputs, the KAN layer, dropout.

    Takes the dendritic layers' arguments (``neuron`` is unused: the KAN's functions are the layer's own weights)."""

    def __init__(self, in_features: int, units: int, dropout: float = 0.0, grid: int = 5, order: int = 3) -> None:
        super().__init__()
        self.units = units
        self.kan = KANLinear(in_features, units, grid, order)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.kan(F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS)))


class KANConv(nn.Module):
    """A convolutional hidden layer of ``units`` channels: LayerNorm (no affine) of the input maps over (C, H, W), the
    KAN convolution, optional max-pool, dropout (returned maps are channels-last, as the dendritic conv's)."""

    def __init__(
        self,
        in_channels: int,
        units: int,
        dropout: float = 0.0,
        kernel_size: int = 3,
        pool: int = 1,
        grid: int = 5,
        order: int = 3,
    ) -> None:
        super().__init__()
        self.units, self.pool = units, pool
        self.kan = KANConv2d(in_channels, units, kernel_size, grid, order)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, x.shape[1:], eps=LAYER_NORM_EPS)
        y = self.kan(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        return self.dropout(max_pool_maps(y, self.pool).permute(0, 3, 1, 2))


KAN_OPTIONS = {"grid": 5, "order": 3}
"""The kan neuron's options and their defaults (efficient-kan's ``grid_size`` and ``spline_order``)."""


def kan_options(options: dict[str, object]) -> dict[str, int]:
    """``grid`` and ``order`` checked: a ValueError naming the config key unless grid >= 1 and order >= 0 are
    integers."""
    for key, least in (("grid", 1), ("order", 0)):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{NET_CONFIG_KEY}.neuron_args.{key} must be an integer >= {least}, got {value!r}")
    return {"grid": int(options["grid"]), "order": int(options["order"])}


register_neuron(
    "kan",
    NeuronSpec(
        1,
        dense=lambda in_features, units, shared, dropout, options: KANDense(
            in_features, units, dropout, **kan_options(options)
        ),
        conv=lambda in_channels, units, shared, dropout, kernel_size, pool, options: KANConv(
            in_channels, units, dropout, kernel_size, pool, **kan_options(options)
        ),
        options=KAN_OPTIONS,
    ),
)
