"""The inner net: one tiny MLP shared by every unit of every layer (network-in-network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_dendrite.nn.inner_kernels import IMPLS, choose_impl, default_chunk_rows, fused_inner, lean_inner, plain_inner


class InnerNet(nn.Module):
    """MLP ``arity -> hidden... -> 1`` with ReLU, Xavier-uniform weights and zero biases.

    ``forward`` maps a tensor whose last dimension is ``arity`` to one value per row (the last
    dimension is dropped); ``evaluate`` does the same along any dimension. Both are exact; the attributes ``impl``
    (``"auto"``, ``"plain"``, ``"lean"`` or ``"fused"``, see :func:`~lit_dendrite.nn.inner_kernels.choose_impl`) and
    ``chunk_rows`` (``None``: the device's tuned value; ``lean`` only) pick how, and are not part of the state dict.
    """

    def __init__(self, arity: int = 2, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        if arity < 1:
            raise ValueError(f"InnerNet arity must be >= 1, got {arity}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"InnerNet hidden widths must be positive, got {list(hidden)}")
        self.arity = arity
        self.hidden = tuple(int(h) for h in hidden)
        widths = (arity, *self.hidden, 1)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.impl = "auto"
        self.chunk_rows: int | None = None
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
            return plain_inner(x.movedim(dim, -1), self.linears)
        if impl == "fused":
            return fused_inner(x, dim, self.linears)
        return lean_inner(x, dim, self.linears, self.chunk_rows or default_chunk_rows(x.device))

    def implementation(self, x: torch.Tensor) -> str:
        """The implementation that evaluates inputs like ``x``: ``impl``, or the automatic choice for ``x``."""
        if self.impl not in IMPLS:
            raise ValueError(f"InnerNet.impl must be one of {IMPLS}, got {self.impl!r}")
        return choose_impl(x, self.linears) if self.impl == "auto" else self.impl

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, chunk_rows={self.chunk_rows}"
