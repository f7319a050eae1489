"""The inner net: one tiny MLP shared by every unit of every layer (network-in-network), and its session-I target."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from lit_dendrite.nn.inner_check import PATHS
from lit_dendrite.nn.inner_kernels import (
    FUSED_IMPLS,
    IMPLS,
    choose_impl,
    default_chunk_rows,
    fused_inner,
    lean_inner,
    plain_inner,
)

STANDARDIZE_SAMPLES = 100_000
"""Standard-normal input rows over which :meth:`InnerNet.standardize_output` measures the output's mean and std."""


class InnerNet(nn.Module):
    """MLP ``arity -> hidden... -> 1`` with ReLU, Xavier-uniform weights and zero biases.

    ``forward`` maps a tensor whose last dimension is ``arity`` to one value per row (the last
    dimension is dropped); ``evaluate`` does the same along any dimension. Both are exact; the attributes ``impl``
    (``"auto"``, ``"plain"``, ``"lean"``, ``"fused"`` or ``"fused_bf16"``, the fused op with bf16 products on CPU,
    also in float32 training; see :func:`~lit_dendrite.nn.inner_kernels.choose_impl`) and
    ``chunk_rows`` (``None``: the device's tuned value; ``lean`` only) pick how, and are not part of the state dict
    (``impl`` starts as the ``impl`` argument, a net's ``neuron_args.impl``).

    With ``standardize``, a fixed gain and offset (buffers ``output_gain``, ``output_offset``; 1 and 0 until
    :meth:`standardize_output` sets them at the end of session I) follow the MLP, so that the function's output has
    zero mean and unit variance over the inputs LayerNorm gives it; they are state (saved, loaded, frozen with the
    weights), never trained. Without it the state dict is the paper's.
    """

    def __init__(
        self, arity: int = 2, hidden: Sequence[int] = (64, 64), standardize: bool = False, impl: str = "auto"
    ) -> None:
        super().__init__()
        if arity < 1:
            raise ValueError(f"InnerNet arity must be >= 1, got {arity}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"InnerNet hidden widths must be positive, got {list(hidden)}")
        self.arity = arity
        self.hidden = tuple(int(h) for h in hidden)
        widths = (arity, *self.hidden, 1)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        if impl not in IMPLS:
            raise ValueError(f"the inner net's impl (neuron_args.impl) must be one of {list(IMPLS)}, got {impl!r}")
        self.impl = impl
        self.chunk_rows: int | None = None
        if not isinstance(standardize, bool):
            raise ValueError(
                f"the inner net's standardize (neuron_args.standardize) must be true or false, got {standardize!r}"
            )
        self.standardize = standardize
        if self.standardize:
            self.register_buffer("output_gain", torch.ones(()))
            self.register_buffer("output_offset", torch.zeros(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases, as in the paper."""
        for linear in self.linears:
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluate(x, -1)

    def evaluate(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The inner net applied along ``dim`` (size ``arity``, removed from the output), without moving it."""
        if x.dim() == 0 or x.shape[dim] != self.arity:
            raise ValueError(f"InnerNet expects size arity={self.arity} along dim {dim}, got shape {tuple(x.shape)}")
        impl = self.implementation(x)
        if impl == "plain":
            y = plain_inner(x.movedim(dim, -1), self.linears)
        elif impl in FUSED_IMPLS:
            y = fused_inner(x, dim, self.linears, bf16=impl == "fused_bf16")
        else:
            y = lean_inner(x, dim, self.linears, self.chunk_rows or default_chunk_rows(x.device))
        return self.output_affine(y)

    def output_affine(self, y: torch.Tensor) -> torch.Tensor:
        """The MLP's outputs ``y`` through the fixed gain and offset (``y`` itself without ``standardize``)."""
        return torch.addcmul(self.output_offset.to(y.dtype), y, self.output_gain.to(y.dtype)) if self.standardize else y

    @torch.no_grad()
    def standardize_output(self, samples: int = STANDARDIZE_SAMPLES, seed: int = 0) -> None:
        """Fix the gain and offset (with ``standardize``; else nothing) so that the output has mean 0 and standard
        deviation 1 over ``samples`` independent standard-normal inputs (LayerNorm's outputs, approximately) drawn
        from a generator seeded with ``seed``, so that the same weights always give the same affine."""
        if not self.standardize:
            return
        inputs = torch.randn(samples, self.arity, generator=torch.Generator().manual_seed(seed))
        param = self.linears[0].weight
        self.output_gain.fill_(1.0)
        self.output_offset.fill_(0.0)
        raw = plain_inner(inputs.to(device=param.device, dtype=param.dtype), self.linears).double()
        std = float(raw.std())
        if not std > 0:
            raise ValueError(
                "the inner net's output is constant over standard-normal inputs, so it cannot be standardised; "
                "pretrain it (session I) or set neuron_args.standardize to false"
            )
        self.output_gain.fill_(1.0 / std)
        self.output_offset.fill_(-float(raw.mean()) / std)

    def implementation(self, x: torch.Tensor) -> str:
        """The implementation that evaluates inputs like ``x``: ``impl``, or the automatic choice for ``x``."""
        if self.impl not in IMPLS:
            raise ValueError(f"InnerNet.impl must be one of {IMPLS}, got {self.impl!r}")
        if self.impl == "auto":
            return choose_impl(x, self.linears)
        PATHS.note(self.impl, self.impl)
        return self.impl

    def extra_repr(self) -> str:
        standardize = ", standardize=True" if self.standardize else ""
        return f"impl={self.impl!r}, chunk_rows={self.chunk_rows}{standardize}"


GRID_POINTS = 101
GRID_LIMIT = 5.0
SMOOTHING_SIGMA = 1 / 3


def smooth_random_function(arity: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (points, arity) on a 101^arity grid over [-5,5] and uniform(-1,1) noise blurred by a normalised
    Gaussian of sigma 1/3 input units (the paper's session-I target)."""
    if arity not in (1, 2, 3):
        raise ValueError(f"pretraining targets exist for arity 1, 2 or 3, got {arity}")
    axis = np.linspace(-GRID_LIMIT, GRID_LIMIT, GRID_POINTS)
    spacing = axis[1] - axis[0]
    noise = np.random.default_rng(seed).uniform(-1, 1, size=(GRID_POINTS,) * arity)
    target = gaussian_filter(noise, sigma=SMOOTHING_SIGMA / spacing, mode="reflect")
    grids = np.meshgrid(*([axis] * arity), indexing="ij")
    inputs = np.stack([g.ravel() for g in grids], axis=-1)
    return torch.tensor(inputs, dtype=torch.float32), torch.tensor(target.ravel(), dtype=torch.float32)


def smooth_target(inner: InnerNet, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Session I's target for ``inner``: this seed's random smooth function of its arity."""
    return smooth_random_function(inner.arity, seed)
