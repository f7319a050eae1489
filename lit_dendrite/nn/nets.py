"""The paper's outer networks (MLP and CNN) built from dendritic layers around the neuron's one shared module."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lit_dendrite.data.datasets import DATASETS
from lit_dendrite.errors import ConfigError
from lit_dendrite.nn.layers import DendriticConv2d, DendriticLinear
from lit_dendrite.nn.matching import match_width
from lit_dendrite.nn.neurons import NET_CONFIG_KEY as CONFIG_KEY
from lit_dendrite.nn.neurons import NeuronSpec, build_neuron, neuron_spec

MNIST, CIFAR10 = DATASETS["mnist"], DATASETS["cifar10"]
"""The data sets whose shapes and statistics are the nets' defaults (training sets them from its own data set)."""
NOT_ARCHITECTURE = ("self", "__class__", "widths", "match_neuron")
"""Constructor arguments that a width-matched reference does not share with the net being built."""


def positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """``values`` as a non-empty tuple of ints; a ValueError naming the argument if one is not a positive integer
    (a width of 0 would train sessions I and II and fail only in session III)."""
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not float(v).is_integer() or v < 1 for v in values):
        raise ConfigError(f"{CONFIG_KEY}.{name} must be positive integers, got {list(values)}")
    return tuple(int(v) for v in values)


class Normalize(nn.Module):
    """Per-channel input normalisation, the network's first layer (data arrive as pixels in [0,1])."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError(f"mean and std need one value per channel and std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class OuterNet(nn.Module):
    """Common base: input checks, the neuron's shared module (``inner``), and the hidden layers its spec asks for."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        neuron: str,
        inner_hidden: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        dropout: float,
        neuron_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ConfigError(f"{CONFIG_KEY}.in_shape must be (channels, height, width), got {list(in_shape)}")
        self.in_shape = positive_ints("in_shape", in_shape)
        if len(mean) != in_shape[0]:
            raise ConfigError(f"mean/std need {in_shape[0]} values (one per input channel), got {len(mean)}")
        if num_classes < 1:
            raise ConfigError(f"{CONFIG_KEY}.num_classes must be at least 1, got {num_classes}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"{CONFIG_KEY}.dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        self.num_classes = num_classes
        self.neuron_name = neuron
        spec = self.neuron_spec
        self.neuron_options = spec.resolve_options(neuron_args)
        self.inner = spec.shared_module(inner_hidden, neuron_args)
        self.normalize = Normalize(mean, std)

    @property
    def neuron_spec(self) -> NeuronSpec:
        """The registry entry of this net's neuron."""
        return neuron_spec(self.neuron_name)

    def make_neuron(self) -> nn.Module:
        """A neuron for one layer; learned neurons all share ``self.inner``."""
        return build_neuron(self.neuron_name, self.inner)

    def dense_layer(self, in_features: int, units: int) -> nn.Module:
        """A dense hidden layer of ``units`` neurons: the neuron's own (``spec.dense``) or a DendriticLinear."""
        spec = self.neuron_spec
        if spec.dense is not None:
            return spec.dense(in_features, units, self.inner, self.dropout, self.neuron_options)
        return DendriticLinear(in_features, units, self.make_neuron(), self.dropout)

    def conv_layer(self, in_channels: int, units: int, kernel_size: int, pool: int) -> nn.Module:
        """A convolutional hidden layer of ``units`` neurons: the neuron's own (``spec.conv``) or a DendriticConv2d."""
        spec = self.neuron_spec
        if spec.conv is not None:
            return spec.conv(in_channels, units, self.inner, self.dropout, kernel_size, pool, self.neuron_options)
        return DendriticConv2d(in_channels, units, self.make_neuron(), self.dropout, kernel_size, pool)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ConfigError(
                f"{type(self).__name__} expects images of shape (N, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(x.shape)}; check the data set against the net's in_shape"
            )

    def matched_widths(
        self, widths: Sequence[int], match_neuron: str | None, architecture: dict[str, object]
    ) -> tuple[int, ...]:
        """``widths``, or with ``match_neuron`` the widths scaled so this net has as many parameters as the same
        architecture built with ``match_neuron`` and ``widths`` (see :func:`match_width`)."""
        widths = positive_ints("widths", widths)
        if match_neuron is not None:
            reference = {"neuron": match_neuron, "widths": widths, "neuron_args": None}  # its own defaults
            widths = match_width(type(self), architecture, reference=reference)
        return tuple(int(w) for w in widths)

    def add_dense_layers(self, width_in: int, widths: Sequence[int]) -> None:
        """Dense dendritic hidden layers (``self.hidden``) and the Linear readout to classes (``self.head``)."""
        layers = []
        for units in widths:
            layers.append(self.dense_layer(width_in, units))
            width_in = units
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width_in, self.num_classes)

    def outer_parameters(self) -> list[nn.Parameter]:
        """All parameters except the shared module's."""
        inner = {id(p) for p in self.inner.parameters()} if self.inner is not None else set()
        return [p for p in self.parameters() if id(p) not in inner]


NETS: dict[str, type[OuterNet]] = {}
"""The networks a run record may name: loading a run builds only these (a new net registers with
:func:`register_net`)."""


def register_net(cls: type[OuterNet]) -> type[OuterNet]:
    """Class decorator: allow run records to name the outer net ``cls`` (under its class name, in :data:`NETS`).
    The net's module must be imported by :mod:`lit_dendrite.nn` so the entry exists before any run is loaded."""
    if not (isinstance(cls, type) and issubclass(cls, OuterNet)):
        raise TypeError(f"register_net takes an OuterNet subclass, got {cls!r}")
    if NETS.get(cls.__name__, cls) is not cls:
        raise ConfigError(
            f"an outer net named {cls.__name__!r} is already registered ({NETS[cls.__name__]}); rename it"
        )
    NETS[cls.__name__] = cls
    return cls


@register_net
class DendriticMLP(OuterNet):
    """MLP with dendritic hidden layers (paper: widths [64, 64, 64] units), dropout, Linear to classes."""

    def __init__(
        self,
        in_shape: Sequence[int] = MNIST.in_shape,
        num_classes: int = MNIST.num_classes,
        widths: Sequence[int] = (64, 64, 64),
        neuron: str = "2arg",
        dropout: float = 0.5,
        inner_hidden: Sequence[int] = (64, 64),
        mean: Sequence[float] = MNIST.mean,
        std: Sequence[float] = MNIST.std,
        match_neuron: str | None = None,
        neuron_args: dict[str, Any] | None = None,
    ) -> None:
        architecture = {k: v for k, v in locals().items() if k not in NOT_ARCHITECTURE}
        super().__init__(in_shape, num_classes, neuron, inner_hidden, mean, std, dropout, neuron_args)
        self.widths = self.matched_widths(widths, match_neuron, architecture)
        self.add_dense_layers(math.prod(self.in_shape), self.widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head(self.hidden(self.normalize(x).flatten(1)))


@register_net
class DendriticCNN(OuterNet):
    """CNN: dendritic conv layers (each followed by 2x2 max-pool), dense dendritic layers, Linear to classes.

    The first ``len(kernels)`` widths are convolutional (no padding, stride 1); the remaining widths are
    dense layers on the flattened map. The paper's CNN, widths [60,120,120,120] with kernels [3,3,3,1],
    is ``kernels=(3, 3, 3)``: its kernel-1 fourth layer acts as a fully connected layer on the 2x2 map.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = CIFAR10.in_shape,
        num_classes: int = CIFAR10.num_classes,
        widths: Sequence[int] = (60, 120, 120, 120),
        kernels: Sequence[int] = (3, 3, 3),
        pool: int = 2,
        neuron: str = "2arg",
        dropout: float = 0.5,
        inner_hidden: Sequence[int] = (64, 64),
        mean: Sequence[float] = CIFAR10.mean,
        std: Sequence[float] = CIFAR10.std,
        match_neuron: str | None = None,
        neuron_args: dict[str, Any] | None = None,
    ) -> None:
        architecture = {k: v for k, v in locals().items() if k not in NOT_ARCHITECTURE}
        super().__init__(in_shape, num_classes, neuron, inner_hidden, mean, std, dropout, neuron_args)
        kernels, (pool,) = positive_ints("kernels", kernels), positive_ints("pool", [pool])
        if len(widths) < len(kernels):
            raise ConfigError(f"need at least one width per conv kernel, got widths={widths}, kernels={kernels}")
        self.widths = self.matched_widths(widths, match_neuron, architecture)
        channels, height, width = self.in_shape
        convs = []
        for units, kernel in zip(self.widths, kernels):
            convs.append(self.conv_layer(channels, units, kernel, pool))
            height, width = (height - kernel + 1) // pool, (width - kernel + 1) // pool
            if height < 1 or width < 1:
                raise ConfigError(f"input {list(in_shape)} is too small for kernels {list(kernels)} with pool {pool}")
            channels = units
        self.features = nn.Sequential(*convs)
        self.add_dense_layers(channels * height * width, self.widths[len(kernels) :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head(self.hidden(self.features(self.normalize(x)).flatten(1)))
