"""Cell types: K inner nets, each serving a fixed block of every layer's units (the authors' first version had 10).

Unit ``u`` of a layer with ``n`` units has type ``floor(u * K / n)``: contiguous blocks of ``n / K`` units (sizes
differ by at most one; every layer needs at least K units, so that every type serves units in every layer). The same
rule in every layer, so type k is the k-th slice of each layer, and in a conv layer a block of channels. All K inner
nets live in one :class:`CellTypeInnerNets`, the net's shared module. On CPU the fused op evaluates all types of a
layer in one call of the native kernel (the types' inner nets stacked, rows grouped by type); elsewhere, or with hooks
or tables, each type's block is evaluated by an ordinary :class:`~lit_dendrite.nn.neurons.LearnedNeuron` of that type
(its exact paths, and frozen its own lookup table), so hooks and tables see one type at a time. With K = 1 the layer
is the 2-arg layer, computed the same way.

As the neuron ``celltypes`` of the registry (option ``types``, default 10, in ``model.net.init_args.neuron_args``)
it follows the paper's protocol: session I fits type k to its own random smooth function (type 0 the run's own, as
2arg's; type k > 0 the one of the seed :func:`cell_type_seed` derives from the run's seed and k), session II trains
all types with the outer net, session III freezes every type (and gives each layer one lookup table per type).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lit_dendrite.errors import ConfigError
from lit_dendrite.nn.inner import InnerNet, smooth_random_function
from lit_dendrite.nn.inner_check import fused_unusable
from lit_dendrite.nn.inner_kernels import FUSED_IMPLS, fused_normalized_inner, inner_params
from lit_dendrite.nn.inner_op import cell_type_blocks
from lit_dendrite.nn.neurons import (
    LAYER_NORM_EPS,
    NET_CONFIG_KEY,
    LearnedNeuron,
    Neuron,
    NeuronSpec,
    max_pool_maps,
    register_neuron,
)


class CellTypeInnerNets(nn.Module):
    """The K inner nets of a cell-type net (``types[k]`` is type k's), held as one shared module."""

    def __init__(self, types: int, arity: int = 2, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        if isinstance(types, bool) or not isinstance(types, int) or types < 1:
            raise ConfigError(f"{NET_CONFIG_KEY}.neuron_args.types must be a positive integer, got {types!r}")
        self.arity = arity
        self.hidden = tuple(int(h) for h in hidden)
        self.types = nn.ModuleList(InnerNet(arity, hidden) for _ in range(types))

    def __len__(self) -> int:
        return len(self.types)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every type's inner net on the rows ``x`` (last dim ``arity``): values ``(..., K)``, type k's in column k."""
        return torch.stack([inner(x) for inner in self.types], dim=-1)


def cell_type_seed(seed: int, cell_type: int) -> int:
    """The session-I target seed of type ``cell_type`` in a run of ``seed``: the run's own for type 0 (so one type is
    2arg), else drawn from numpy's SeedSequence of (seed, type), independent of every other run's and type's."""
    if cell_type == 0:
        return seed
    return int(np.random.SeedSequence([seed, cell_type]).generate_state(1)[0])


def cell_type_targets(inners: CellTypeInnerNets, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Session I's target: the grid of the random smooth functions and, in column k, type k's function on it."""
    targets = [smooth_random_function(inners.arity, cell_type_seed(seed, k)) for k in range(len(inners))]
    return targets[0][0], torch.stack([values for _, values in targets], dim=-1)


class CellTypeNeuron(Neuron):
    """A layer's neurons when units have types: ``types[k]`` (a LearnedNeuron on inner net k) evaluates block k.

    ``forward(x, dim)`` types the units along the output's last dim (the dendritic layers' layout: ``(..., units)``
    from ``(..., units, arity)``), whichever dim of ``x`` holds the ``arity`` inputs.
    """

    def __init__(self, inners: CellTypeInnerNets) -> None:
        super().__init__()
        self.arity = inners.arity
        self.types = nn.ModuleList(LearnedNeuron(inner) for inner in inners.types)

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        self._check(x, dim)
        if len(self.types) == 1:
            return self.types[0](x, dim)
        dim = dim % x.dim()
        if x.dim() < 2:
            raise ConfigError(f"CellTypeNeuron needs a dim of units besides the inputs, got shape {tuple(x.shape)}")
        units = x.dim() - 1 if dim < x.dim() - 1 else x.dim() - 2
        blocks = self._blocks(x.shape[units])
        outputs = [
            neuron(x.narrow(units, start, stop - start), dim) for neuron, (start, stop) in zip(self.types, blocks)
        ]
        return torch.cat(outputs, -1)

    def _blocks(self, units: int) -> list[tuple[int, int]]:
        if units < len(self.types):
            raise ConfigError(
                f"a layer of {units} units cannot hold {len(self.types)} cell types; give every layer at "
                f"least {len(self.types)} units ({NET_CONFIG_KEY}.widths) or fewer types (neuron_args.types)"
            )
        return cell_type_blocks(units, len(self.types))

    def normalized(self, z: torch.Tensor, normalized_ndim: int, pool: int = 1) -> torch.Tensor:
        """LayerNorm over the whole layer, then every type's block of units: in one call of the fused op (the types'
        inner nets stacked; native CPU kernel) where type 0's ``impl`` picks the fused op for the whole layer, else
        each block through its neuron; with one type, the 2-arg layer's own path. Hooks on the neuron or on a type,
        and lookup tables, take the per-block path."""
        hooked = any(m._forward_pre_hooks or m._forward_hooks for m in (self, *self.types))
        if len(self.types) == 1 and not (self._forward_pre_hooks or self._forward_hooks):
            return self.types[0].normalized(z, normalized_ndim, pool)
        impl = self.types[0].inner.implementation(z)
        if impl in FUSED_IMPLS and not hooked and all(neuron.table is None for neuron in self.types):
            self._blocks(z.shape[-1] // self.arity)
            params = [torch.stack(p) for p in zip(*(inner_params(neuron.inner.linears) for neuron in self.types))]
            bf16 = impl == "fused_bf16"
            if fused_unusable(z, params, bf16) is None:  # the stacked call: the op's checks and self-check
                return max_pool_maps(fused_normalized_inner(z, normalized_ndim, params, LAYER_NORM_EPS, bf16), pool)
        z = F.layer_norm(z, z.shape[z.dim() - normalized_ndim :], eps=LAYER_NORM_EPS)
        return max_pool_maps(self(z.unflatten(-1, (-1, self.arity)), dim=-1), pool)


def _shared(hidden: Sequence[int], options: Mapping[str, Any]) -> CellTypeInnerNets:
    return CellTypeInnerNets(options["types"], 2, hidden)


register_neuron(
    "celltypes",
    NeuronSpec(
        2,
        build=CellTypeNeuron,
        shared=_shared,
        pretrain=cell_type_targets,
        freeze=True,
        tables=True,
        analysis="surface",
        options={"types": 10},
    ),
)
