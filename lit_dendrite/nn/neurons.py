"""Neurons: modules that turn a group of ``arity`` pre-activations into one value.

Every neuron takes the same arguments, ``forward(x, dim=-1)``, where ``x.shape[dim] == arity`` and
that dimension is removed. A neuron is picked by name through :data:`NEURONS`; learned neurons share one
:class:`InnerNet` owned by the outer network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lit_dendrite.nn.inner import InnerNet
from lit_dendrite.nn.inner_kernels import fused_normalized_inner

LAYER_NORM_EPS = 1e-5
"""The epsilon of the dendritic layers' LayerNorm (``F.layer_norm``'s default); the native paths use it too."""


class Neuron(nn.Module):
    """Base class: ``arity`` inputs along ``dim`` -> one output."""

    arity: int = 1

    def normalized(self, z: torch.Tensor, normalized_ndim: int, pool: int = 1) -> torch.Tensor:
        """A dendritic layer's nonlinearity: LayerNorm (no affine) of ``z`` over its last ``normalized_ndim`` dims, this
        neuron on each group of ``arity`` adjacent features of the last dim (which shrinks by ``arity``), then with
        ``pool`` > 1 a pool x pool max-pool of (N, H, W, C) maps over H and W."""
        z = F.layer_norm(z, z.shape[z.dim() - normalized_ndim :], eps=LAYER_NORM_EPS)
        return max_pool_maps(self(z.unflatten(-1, (-1, self.arity)), dim=-1), pool)

    def _check(self, x: torch.Tensor, dim: int) -> None:
        if x.dim() == 0 or x.shape[dim] != self.arity:
            raise ValueError(
                f"{type(self).__name__} expects size {self.arity} along dim {dim}, got shape {tuple(x.shape)}"
            )


class LearnedNeuron(Neuron):
    """A learned activation: the shared inner net applied to each group of ``arity`` inputs.

    ``table`` is ``None`` (exact inner net) or this layer's frozen lookup table, set by
    :func:`lit_dendrite.nn.tabulated.tabulate_inner`.
    """

    def __init__(self, inner: InnerNet) -> None:
        super().__init__()
        self.inner = inner
        self.arity = inner.arity
        self.table: nn.Module | None = None

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        self._check(x, dim)
        if self.table is not None:
            return self.table(x, dim, self.inner)
        return self.inner.evaluate(x, dim)

    def normalized(self, z: torch.Tensor, normalized_ndim: int, pool: int = 1) -> torch.Tensor:
        """As :meth:`Neuron.normalized`; a table fuses LayerNorm, lookup and pool where it can (see ``fuses``), and the
        fused inner net takes the LayerNorm into its op (see ``fused_normalized_inner``). A neuron
        with forward hooks runs unfused, so that its hooks see its inputs."""
        if self._forward_pre_hooks or self._forward_hooks:
            return super().normalized(z, normalized_ndim, pool)
        if self.table is not None and self.table.fuses(z):
            return self.table.normalized(z, normalized_ndim, self.inner, pool)
        if self.table is None and self.inner.implementation(z) == "fused":
            return max_pool_maps(fused_normalized_inner(z, normalized_ndim, self.inner.linears, LAYER_NORM_EPS), pool)
        return super().normalized(z, normalized_ndim, pool)


def max_pool_maps(y: torch.Tensor, pool: int) -> torch.Tensor:
    """A pool x pool max-pool of (N, H, W, C) maps over H and W (``y`` itself for ``pool`` 1)."""
    return F.max_pool2d(y.permute(0, 3, 1, 2), pool).permute(0, 2, 3, 1) if pool > 1 else y


class ElementwiseNeuron(Neuron):
    """A fixed one-argument activation such as ReLU."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.arity = 1

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        self._check(x, dim)
        return self.fn(x.squeeze(dim))

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class GatedNeuron(Neuron):
    """A fixed two-argument control ``gate(a) * b``: ``product`` (identity gate) or ``swiglu`` (silu)."""

    def __init__(self, gate: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.gate = gate
        self.arity = 2

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        self._check(x, dim)
        a, b = x.unbind(dim)
        return self.gate(a) * b

    def extra_repr(self) -> str:
        return getattr(self.gate, "__name__", repr(self.gate))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class NeuronSpec:
    """What a neuron name means: its arity, whether it owns an inner net, and how to build it."""

    arity: int
    learned: bool
    build: Callable[[InnerNet | None], Neuron]


NEURONS: dict[str, NeuronSpec] = {
    "1arg": NeuronSpec(1, True, lambda inner: LearnedNeuron(inner)),
    "2arg": NeuronSpec(2, True, lambda inner: LearnedNeuron(inner)),
    "3arg": NeuronSpec(3, True, lambda inner: LearnedNeuron(inner)),
    "relu": NeuronSpec(1, False, lambda _: ElementwiseNeuron(torch.relu)),
    "gelu": NeuronSpec(1, False, lambda _: ElementwiseNeuron(F.gelu)),
    "silu": NeuronSpec(1, False, lambda _: ElementwiseNeuron(F.silu)),
    "product": NeuronSpec(2, False, lambda _: GatedNeuron(_identity)),
    "swiglu": NeuronSpec(2, False, lambda _: GatedNeuron(F.silu)),
}


def neuron_spec(name: str) -> NeuronSpec:
    """Look a neuron up by name, with an error listing the known names."""
    try:
        return NEURONS[name]
    except KeyError:
        raise ValueError(f"unknown neuron {name!r}; choose one of {sorted(NEURONS)}") from None


def build_neuron(name: str, inner: InnerNet | None = None) -> Neuron:
    """Build the neuron ``name``; learned neurons need the shared ``inner`` net of matching arity."""
    spec = neuron_spec(name)
    if spec.learned:
        if inner is None or inner.arity != spec.arity:
            got = None if inner is None else inner.arity
            raise ValueError(f"neuron {name!r} needs a shared InnerNet of arity {spec.arity}, got {got}")
        return spec.build(inner)
    return spec.build(None)


def learned_neurons(net: nn.Module) -> dict[str, LearnedNeuron]:
    """The net's learned neurons by module name (one per dendritic layer), in forward order."""
    return {name: module for name, module in net.named_modules() if isinstance(module, LearnedNeuron)}
