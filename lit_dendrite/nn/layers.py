"""Dendritic layers: ``arity`` projections per unit, LayerNorm without affine, a neuron, dropout.

Both layers take the same arguments (inputs, units, neuron, dropout) so they are interchangeable in the
outer-network builders; the pre-activations of one unit are ``arity`` adjacent features (adjacent
channels in the convolutional layer).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_dendrite.nn.neurons import Neuron


class DendriticLinear(nn.Module):
    """Dense layer of ``units`` neurons, each fed ``neuron.arity`` adjacent pre-activations."""

    def __init__(self, in_features: int, units: int, neuron: Neuron, dropout: float = 0.0) -> None:
        super().__init__()
        self.units = units
        self.arity = neuron.arity
        self.linear = nn.Linear(in_features, self.arity * units)
        self.neuron = neuron
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.neuron.normalized(self.linear(x), 1))


class DendriticConv2d(nn.Module):
    """Convolution with ``neuron.arity`` adjacent channels per unit, LayerNorm over (C,H,W), optional pool.

    Computes in channels-last memory (returned maps are channels-last): each unit's ``arity``
    pre-activations are then adjacent in memory, so neurons read them as contiguous rows, and on CPU the
    convolution ran 1.3-2x and the 2x2 max-pool about 15x faster than on contiguous maps
    (``benchmarks/neurons.py``). The values are those of the usual (N, C, H, W) computation.
    """

    def __init__(
        self,
        in_channels: int,
        units: int,
        neuron: Neuron,
        dropout: float = 0.0,
        kernel_size: int = 3,
        pool: int = 1,
    ) -> None:
        super().__init__()
        self.units = units
        self.arity = neuron.arity
        self.conv = nn.Conv2d(in_channels, self.arity * units, kernel_size)
        self.neuron = neuron
        self.pool = pool
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x.contiguous(memory_format=torch.channels_last))
        z = z.permute(0, 2, 3, 1)  # (N, H, W, C): a free view of the channels-last map
        # LayerNorm over (H, W, C): the same per-image statistics as over (C, H, W); then the neuron and the pool
        y = self.neuron.normalized(z, 3, self.pool).permute(0, 3, 1, 2)
        return self.dropout(y)
