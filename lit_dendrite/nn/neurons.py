"""Neurons: modules that turn a group of ``arity`` pre-activations into one value, and the registry of their names.

Every neuron takes the same arguments, ``forward(x, dim=-1)``, where ``x.shape[dim] == arity`` and that dimension is
removed. A net's ``neuron`` argument is a name in :data:`NEURONS`, whose :class:`NeuronSpec` says everything the
project needs to know about it, so that no other module assumes what a learned neuron is:

- ``arity`` and ``build(shared)``, the neuron of one layer (or ``dense`` / ``conv``: whole layers it brings itself);
- ``shared(inner_hidden, options)``: the learned module the outer net owns at ``net.inner`` and every layer shares
  (None for fixed neurons); its weights are stored under ``net.inner.`` in checkpoints;
- ``pretrain(shared, seed)``: session I's target for it, ``freeze``: session III freezes it, ``tables``: session III's
  lookup-table fast path applies, ``analysis``: ``"surface"`` (2-D surfaces and saddle statistics) or ``"curve"``
  (the 1-D activation curve);
- ``options``: the neuron's own arguments with their defaults, set per net by ``model.net.init_args.neuron_args``.

Adding a neuron is one file: its module (a :class:`SharedNeuron` subclass when it evaluates a shared learned
module), and its ``register_neuron(name, NeuronSpec(...))`` call; the file is imported by ``lit_dendrite/nn/__init__``
so the name exists wherever the package is imported. The paper's learned neurons (``1arg``, ``2arg``, ``3arg``) share
one :class:`InnerNet`, pretrained to a random smooth function (:func:`~lit_dendrite.nn.inner.smooth_target`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_dendrite.errors import ConfigError
from lit_dendrite.nn.inner import InnerNet, smooth_target
from lit_dendrite.nn.inner_kernels import FUSED_IMPLS, fused_normalized_inner, inner_params

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
            raise ConfigError(
                f"{type(self).__name__} expects size {self.arity} along dim {dim}, got shape {tuple(x.shape)}"
            )


class SharedNeuron(Neuron):
    """A neuron that evaluates the outer net's shared learned module ``inner`` (the same object in every layer)."""

    def __init__(self, inner: nn.Module, arity: int) -> None:
        super().__init__()
        self.inner = inner
        self.arity = arity


class LearnedNeuron(SharedNeuron):
    """A learned activation: the shared inner net applied to each group of ``arity`` inputs.

    ``table`` is ``None`` (exact inner net) or this layer's frozen lookup table, set by
    :func:`lit_dendrite.nn.tabulated.tabulate_inner`.
    """

    def __init__(self, inner: InnerNet) -> None:
        super().__init__(inner, inner.arity)
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
        impl = self.inner.implementation(z) if self.table is None else None
        if impl in FUSED_IMPLS:
            params = inner_params(self.inner.linears)
            fused = fused_normalized_inner(z, normalized_ndim, params, LAYER_NORM_EPS, impl == "fused_bf16")
            return max_pool_maps(self.inner.output_affine(fused), pool)
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
    """What a neuron name means; every part of the project reads it here instead of assuming an inner net.

    ``arity``: pre-activations per unit. ``build(shared)``: the neuron of one layer, given the net's shared module.
    ``shared(inner_hidden, options)``: the learned module the outer net owns at ``net.inner`` (one per net, shared by
    every layer; None for fixed neurons); it sees the net's ``inner_hidden`` and the neuron's ``options`` (the
    defaults below updated by the net's ``neuron_args``). ``pretrain(shared, seed)``: session I's target, inputs and
    values with ``shared(inputs)`` shaped like the values (None: no session I). ``freeze``: session III freezes the
    shared module from session II's best checkpoint and re-trains the outer net (False: session II only).
    ``tables``: session III may run through the frozen inner net's lookup tables (:mod:`lit_dendrite.nn.tabulated`).
    ``analysis``: ``"surface"`` (the 2-D surface and its saddle statistics), ``"curve"`` (the 1-D activation curve)
    or None. ``dense(in_features, units, shared, dropout, options)`` / ``conv(in_channels, units, shared, dropout,
    kernel_size, pool, options)``: a whole hidden layer when the neuron brings its own, instead of a
    :class:`~lit_dendrite.nn.layers.DendriticLinear` / ``DendriticConv2d`` around ``build(shared)``.
    ``finish_pretrain(shared)``: what the end of session I fixes in the shared module, on its best fit, before it is
    saved (None: nothing), such as the inner net's output standardisation; a run without session I applies it to
    session II's freshly initialised shared module.
    """

    arity: int
    build: Callable[[nn.Module | None], Neuron] | None = None
    shared: Callable[[Sequence[int], Mapping[str, Any]], nn.Module] | None = None
    pretrain: Callable[[nn.Module, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    freeze: bool = False
    tables: bool = False
    analysis: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    dense: Callable[..., nn.Module] | None = None
    conv: Callable[..., nn.Module] | None = None
    finish_pretrain: Callable[[nn.Module], None] | None = None

    def __post_init__(self) -> None:
        if self.arity < 1:
            raise ConfigError(f"a neuron's arity must be >= 1, got {self.arity}")
        if self.build is None and (self.dense is None or self.conv is None):
            raise ConfigError("a neuron spec needs build, or both dense and conv layers")
        if self.analysis not in ANALYSES:
            raise ConfigError(f"analysis must be one of {ANALYSES}, got {self.analysis!r}")
        if (self.pretrain is not None or self.freeze or self.tables) and self.shared is None:
            raise ConfigError("pretrain, freeze and tables need a shared module (spec.shared)")
        if self.finish_pretrain is not None and self.pretrain is None:
            raise ConfigError("finish_pretrain needs a session-I target (spec.pretrain)")

    @property
    def learned(self) -> bool:
        """Whether the net owns a learned module shared by its neurons (``net.inner``)."""
        return self.shared is not None

    def resolve_options(self, neuron_args: Mapping[str, Any] | None) -> dict[str, Any]:
        """The neuron's options: its defaults updated by ``neuron_args``; an unknown key is an error naming them."""
        neuron_args = dict(neuron_args or {})
        unknown = sorted(set(neuron_args) - set(self.options))
        if unknown:
            known = sorted(self.options) or "none"
            raise ConfigError(f"{NET_CONFIG_KEY}.neuron_args {unknown} are not options of this neuron (it has {known})")
        return {**self.options, **neuron_args}

    def shared_module(
        self, inner_hidden: Sequence[int] = (64, 64), neuron_args: Mapping[str, Any] | None = None
    ) -> nn.Module | None:
        """A fresh shared module (None for fixed neurons)."""
        return None if self.shared is None else self.shared(inner_hidden, self.resolve_options(neuron_args))


ANALYSES = (None, "surface", "curve")
"""What the analysis does with a neuron's shared module: nothing, the 2-D surface with its saddle statistics, the
1-D activation curve."""
NET_CONFIG_KEY = "model.net.init_args"
"""Where a training configuration sets a net's arguments: errors name the key to fix under it."""

NEURONS: dict[str, NeuronSpec] = {}
"""The neuron registry: name -> spec. Add to it with :func:`register_neuron`."""


def register_neuron(name: str, spec: NeuronSpec) -> NeuronSpec:
    """Make ``name`` a neuron every net, config and analysis accepts; refuses to redefine a known name."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a neuron name must be a non-empty string, got {name!r}")
    if name in NEURONS:
        raise ConfigError(f"neuron {name!r} is already registered")
    NEURONS[name] = spec
    return spec


def inner_net_spec(arity: int, analysis: str | None) -> NeuronSpec:
    """A learned neuron of the paper: one :class:`InnerNet` of ``arity`` inputs shared by every unit, pretrained in
    session I to a random smooth function, frozen in session III. Option ``standardize`` (default false): a gain and
    offset fixed when session I ends make the function's output zero-mean and unit-variance over standard-normal
    inputs (:meth:`InnerNet.standardize_output`; docs/resnet-diagnosis.md). Option ``impl`` (default ``auto``): how
    the inner net is evaluated, e.g. ``fused_bf16`` for the native kernel's bf16 products in float32 training
    (docs/performance.md)."""
    return NeuronSpec(
        arity,
        build=LearnedNeuron,
        shared=lambda hidden, options: InnerNet(arity, hidden, options["standardize"], options["impl"]),
        pretrain=smooth_target,
        freeze=True,
        tables=True,
        analysis=analysis,
        options={"standardize": False, "impl": "auto"},
        finish_pretrain=lambda inner: inner.standardize_output(),
    )


register_neuron("1arg", inner_net_spec(1, "curve"))
register_neuron("2arg", inner_net_spec(2, "surface"))
register_neuron("3arg", inner_net_spec(3, None))
register_neuron("relu", NeuronSpec(1, lambda _: ElementwiseNeuron(torch.relu)))
register_neuron("gelu", NeuronSpec(1, lambda _: ElementwiseNeuron(F.gelu)))
register_neuron("silu", NeuronSpec(1, lambda _: ElementwiseNeuron(F.silu)))
register_neuron("product", NeuronSpec(2, lambda _: GatedNeuron(_identity)))
register_neuron("swiglu", NeuronSpec(2, lambda _: GatedNeuron(F.silu)))


def neuron_spec(name: str) -> NeuronSpec:
    """Look a neuron up by name, with an error listing the known names."""
    try:
        return NEURONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown neuron {name!r}; choose one of {sorted(NEURONS)}") from None


def build_neuron(name: str, shared: nn.Module | None = None) -> Neuron:
    """Build the neuron ``name`` for one layer; learned neurons need the net's ``shared`` module (``net.inner``)."""
    spec = neuron_spec(name)
    if spec.build is None:
        raise ConfigError(f"neuron {name!r} brings its own layers (spec.dense / spec.conv), not a neuron module")
    if spec.learned:
        got = getattr(shared, "arity", spec.arity) if shared is not None else None
        if got != spec.arity:
            raise ConfigError(f"neuron {name!r} needs the net's shared module of arity {spec.arity}, got {got}")
        return spec.build(shared)
    return spec.build(None)


def net_neuron_spec(module: nn.Module) -> NeuronSpec | None:
    """The neuron spec of the outer net ``module`` is or holds (a Classifier holds one), None if there is none."""
    for candidate in module.modules():
        name = getattr(candidate, "neuron_name", None)
        if isinstance(name, str):
            return neuron_spec(name)
    return None


def analysed_module(module: nn.Module, analysis: str) -> nn.Module | None:
    """The shared learned module (``net.inner``) of the outer net in ``module`` if its neuron's analysis is
    ``analysis`` (``"surface"`` or ``"curve"``), else None."""
    for candidate in module.modules():
        name = getattr(candidate, "neuron_name", None)
        if isinstance(name, str):
            return candidate.inner if neuron_spec(name).analysis == analysis else None
    return None


def learned_neurons(net: nn.Module) -> dict[str, SharedNeuron]:
    """The net's neurons that evaluate its shared learned module, by module name (one per layer), in forward order."""
    return {name: module for name, module in net.named_modules() if isinstance(module, SharedNeuron)}


def inner_net_neurons(net: nn.Module) -> dict[str, LearnedNeuron]:
    """The net's inner-net neurons (those that can run through frozen tables), by module name, in forward order."""
    return {name: module for name, module in net.named_modules() if isinstance(module, LearnedNeuron)}
