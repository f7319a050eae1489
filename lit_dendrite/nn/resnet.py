"""The CIFAR ResNet-18 (He et al. 2016, as in the usual CIFAR variant: 3x3 stem, no max-pool) with dendritic units.

Every conv + ReLU of the ResNet becomes a conv giving ``arity`` channels per unit, its BatchNorm (kept where the
ResNet has one), then, as in the paper's dendritic layers, LayerNorm without affine over (C, H, W) and the neuron on
each group of ``arity`` adjacent channels. In a BasicBlock:

    first = neuron(LN(BN1(conv1(x))))                      # the ReLU after the first conv + BN
    out   = neuron(LN(BN2(conv2(first)) + shortcut(x)))     # the ReLU after the residual addition

``conv2`` gives ``arity`` pre-activations per unit and the shortcut (identity, or a 1x1 conv + BN where the stage
changes width or stride) one value per unit, added to each of that unit's ``arity`` pre-activations: every dendrite
sees the residual stream plus its own learned correction. Why this form: with arity 1 it is exactly the ResNet's
``relu(BN2(conv2) + shortcut)`` (the controls are the plain ResNet with the paper's LayerNorm), the shortcut stays
parameter-free or as small as the ResNet's (a residual of ``arity`` values per unit would make the identity shortcut
impossible), and no extra layer is added to feed the neuron after the sum (a 1x1 conv there would be a layer the
ReLU control lacks). Parameters grow about ``arity``-fold: convs and BatchNorms have ``arity`` times the output
channels, shortcuts and the readout do not. Every neuron is an ordinary dendritic-layer neuron (called through
``Neuron.normalized``), so session III's frozen lookup tables apply unchanged (``tabulate_inner``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lit_dendrite.errors import ConfigError
from lit_dendrite.nn.nets import CIFAR10, CONFIG_KEY, NOT_ARCHITECTURE, OuterNet, positive_ints, register_net
from lit_dendrite.nn.neurons import Neuron

RESNET18_WIDTHS = (64, 128, 256, 512)
RESNET18_BLOCKS = (2, 2, 2, 2)


class DendriticConvBN2d(nn.Module):
    """Conv (``arity`` channels per unit, no bias) -> BatchNorm -> [+ a residual per unit] -> LayerNorm -> neuron.

    Computes in channels-last memory like :class:`~lit_dendrite.nn.layers.DendriticConv2d` (each unit's
    pre-activations adjacent in memory); returns (N, units, H', W') maps, channels-last.
    """

    def __init__(
        self, in_channels: int, units: int, neuron: Neuron, stride: int = 1, post_neuron_bn: bool = False
    ) -> None:
        super().__init__()
        self.units = units
        self.arity = neuron.arity
        self.conv = nn.Conv2d(in_channels, self.arity * units, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(self.arity * units)
        self.neuron = neuron
        self.post_bn = nn.BatchNorm2d(units) if post_neuron_bn else nn.Identity()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual``: (N, units, H', W') maps, one value per unit added to each of its ``arity`` pre-activations."""
        z = self.bn(self.conv(x.contiguous(memory_format=torch.channels_last))).permute(0, 2, 3, 1)
        if residual is not None:
            z = (z.unflatten(-1, (self.units, self.arity)) + residual.permute(0, 2, 3, 1).unsqueeze(-1)).flatten(-2)
        return self.post_bn(self.neuron.normalized(z, 3).permute(0, 3, 1, 2))


class Projection(nn.Module):
    """The ResNet's projection shortcut, a 1x1 conv with ``stride`` + BatchNorm, computed as the 1x1 conv of the
    subsampled map (the same values): torch 2.14's CPU backward of a strided 1x1 conv on channels-last maps crashed
    (segmentation fault) in about one run in three with an odd batch size, such as a data set's last batch."""

    def __init__(self, in_channels: int, units: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, units, 1, bias=False)
        self.bn = nn.BatchNorm2d(units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x[:, :, :: self.stride, :: self.stride]))


class DendriticBasicBlock(nn.Module):
    """ResNet BasicBlock with dendritic units: the residual sum is taken per pre-activation (see the module)."""

    def __init__(
        self, in_channels: int, units: int, stride: int, make_neuron: Callable[[], Neuron], post_neuron_bn: bool
    ) -> None:
        super().__init__()
        self.first = DendriticConvBN2d(in_channels, units, make_neuron(), stride, post_neuron_bn)
        self.second = DendriticConvBN2d(units, units, make_neuron(), post_neuron_bn=post_neuron_bn)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != units:
            self.shortcut = Projection(in_channels, units, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.second(self.first(x), residual=self.shortcut(x))


def scaled_widths(widths: Sequence[int], width_multiplier: float) -> list[int]:
    """Stage widths times ``width_multiplier``, rounded, at least 1 (before any parameter matching)."""
    return [max(1, round(width_multiplier * w)) for w in widths]


@register_net
class DendriticResNet(OuterNet):
    """CIFAR ResNet-18 with dendritic units: 3x3 stem (stride 1, no max-pool), stages of BasicBlocks (``blocks``
    per stage, stride 2 at the start of every stage but the first), global average pooling, dropout, Linear.

    ``widths`` are the units of each stage (ResNet-18: 64, 128, 256, 512; the stem has the first stage's);
    ``width_multiplier`` scales them (rounded) before anything else, so ``0.125`` is a ResNet-18 of widths
    8, 16, 32, 64. With ``match_neuron``, the (scaled) widths are rescaled so that this net has the parameters of
    the same net built with ``match_neuron`` (see :meth:`OuterNet.matched_widths`). ``residual_bn_init`` is the
    initial weight of every block's second BatchNorm (the one before the residual sum; None: 1 like the others),
    ``0`` being torchvision's ``zero_init_residual`` (Goyal et al. 2017): each block starts as its shortcut.
    ``post_neuron_bn`` puts a BatchNorm over the units after every neuron (None: none), so that the residual stream
    and the next conv see unit-scale activations whatever the scale of the neuron's output (docs/resnet-diagnosis.md).
    """

    def __init__(
        self,
        in_shape: Sequence[int] = CIFAR10.in_shape,
        num_classes: int = CIFAR10.num_classes,
        widths: Sequence[int] = RESNET18_WIDTHS,
        width_multiplier: float = 1.0,
        blocks: Sequence[int] = RESNET18_BLOCKS,
        neuron: str = "2arg",
        dropout: float = 0.0,
        inner_hidden: Sequence[int] = (64, 64),
        mean: Sequence[float] = CIFAR10.mean,
        std: Sequence[float] = CIFAR10.std,
        match_neuron: str | None = None,
        neuron_args: dict[str, Any] | None = None,
        residual_bn_init: float | None = None,
        post_neuron_bn: bool | None = None,
    ) -> None:
        if not (math.isfinite(width_multiplier) and width_multiplier > 0):
            raise ConfigError(f"{CONFIG_KEY}.width_multiplier must be a finite number > 0, got {width_multiplier}")
        if residual_bn_init is not None and not math.isfinite(residual_bn_init):
            raise ConfigError(f"{CONFIG_KEY}.residual_bn_init must be a finite number or null, got {residual_bn_init}")
        # the reference of a matched control is built from the already scaled widths
        architecture = {k: v for k, v in locals().items() if k not in NOT_ARCHITECTURE} | {"width_multiplier": 1.0}
        super().__init__(in_shape, num_classes, neuron, inner_hidden, mean, std, dropout, neuron_args)
        if self.neuron_spec.conv is not None or self.neuron_spec.build is None:
            raise ConfigError(
                f"neuron {neuron!r} brings its own conv layer, which {type(self).__name__} cannot put in a residual "
                "block; choose a neuron that acts on a layer's pre-activations (such as 2arg, 1arg or relu)"
            )
        blocks = positive_ints("blocks", blocks)
        scaled = scaled_widths(positive_ints("widths", widths), width_multiplier)
        if len(scaled) != len(blocks):
            raise ConfigError(
                f"{CONFIG_KEY}.widths and .blocks need one value per stage, got widths={list(widths)}, "
                f"blocks={list(blocks)}"
            )
        self.widths = self.matched_widths(scaled, match_neuron, architecture)
        self.blocks = blocks
        self.stem = DendriticConvBN2d(self.in_shape[0], self.widths[0], self.make_neuron(), 1, bool(post_neuron_bn))
        stages, channels = [], self.widths[0]
        for stage, (units, count) in enumerate(zip(self.widths, blocks)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                stages.append(DendriticBasicBlock(channels, units, stride, self.make_neuron, bool(post_neuron_bn)))
                channels = units
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self.residual_bn_init = residual_bn_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's ResNet initialisation of the convolutions (Kaiming normal, fan-out) and BatchNorms (1, 0),
        then ``residual_bn_init`` for each block's second BatchNorm."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.residual_bn_init is not None:
            for block in self.stages:
                nn.init.constant_(block.second.bn.weight, self.residual_bn_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = self.stages(self.stem(self.normalize(x)))
        return self.head(self.drop(self.pool(features).flatten(1)))
