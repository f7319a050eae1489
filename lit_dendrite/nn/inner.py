"""The inner net: one tiny MLP shared by every unit of every layer (network-in-network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InnerNet(nn.Module):
    """MLP ``arity -> hidden... -> 1`` with ReLU, Xavier-uniform weights and zero biases.

    ``forward`` maps a tensor whose last dimension is ``arity`` to one value per row (the last
    dimension is dropped).
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases, as in the paper."""
        for linear in self.linears:
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.arity:
            raise ValueError(
                f"InnerNet expects a last dimension of size arity={self.arity}, got shape {tuple(x.shape)}"
            )
        for linear in self.linears[:-1]:
            x = torch.relu(linear(x))
        return self.linears[-1](x).squeeze(-1)
