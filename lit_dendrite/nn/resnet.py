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

``block_layout: pre`` is He et al. 2016's pre-activation ("identity mappings") block with the same nonlinearity:

    out = x + conv2(neuron(LN(BN2(conv1(neuron(LN(BN1(x))))))))

The residual stream then carries pre-activations, ``arity`` channels per unit (the stem is a conv giving them, the
net ends in BN -> LN -> neuron before the pooling), so every addition is of ``arity`` values per unit and the
identity shortcut stays parameter-free; a projection shortcut (a 1x1 conv, no BatchNorm, as in pre-activation
ResNets) maps the first neuron's units to the next stage's pre-activations. Convolutions and BatchNorms have the
post layout's sizes, a projection ``arity`` times its weights; with arity 1 this is the pre-activation ResNet with
the paper's LayerNorm.
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
BLOCK_LAYOUTS = ("post", "pre")
"""Where the neuron sits in a residual block: after the residual sum (the ResNet's, default) or before each conv."""


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

    def __init__(self, in_channels: int, units: int, stride: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, units, 1, bias=False)
        self.bn = nn.BatchNorm2d(units) if batch_norm else nn.Identity()

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

    @property
    def branch_end(self) -> nn.Module:
        """The module whose output is the branch added to the residual: the second BatchNorm."""
        return self.second.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.second(self.first(x), residual=self.shortcut(x))


class PreActivation(nn.Module):
    """BatchNorm -> LayerNorm -> neuron on (N, ``arity`` * units, H, W) maps of pre-activations (each unit's
    adjacent), [-> BatchNorm over the units]; returns (N, units, H, W) maps, channels-last."""

    def __init__(self, units: int, neuron: Neuron, post_neuron_bn: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(neuron.arity * units)
        self.neuron = neuron
        self.post_bn = nn.BatchNorm2d(units) if post_neuron_bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bn(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        return self.post_bn(self.neuron.normalized(z, 3).permute(0, 3, 1, 2))


class PreActBasicBlock(nn.Module):
    """He et al. 2016's pre-activation BasicBlock with dendritic units (see the module): the residual stream holds
    ``arity`` pre-activations per unit."""

    def __init__(
        self, in_channels: int, units: int, stride: int, make_neuron: Callable[[], Neuron], post_neuron_bn: bool
    ) -> None:
        super().__init__()
        first, second = make_neuron(), make_neuron()
        self.first = PreActivation(in_channels, first, post_neuron_bn)
        self.conv1 = nn.Conv2d(in_channels, first.arity * units, 3, stride=stride, padding=1, bias=False)
        self.second = PreActivation(units, second, post_neuron_bn)
        self.conv2 = nn.Conv2d(units, second.arity * units, 3, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != units:
            self.shortcut = Projection(in_channels, first.arity * units, stride, batch_norm=False)

    @property
    def branch_end(self) -> nn.Module:
        """The module whose output is the branch added to the residual: the second conv."""
        return self.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.first(x)
        # as in pre-activation ResNets, a projection reads the activated input, the identity the stream itself
        residual = self.shortcut(x if isinstance(self.shortcut, nn.Identity) else activated)
        branch = self.conv2(self.second(self.conv1(activated)).contiguous(memory_format=torch.channels_last))
        return branch + residual


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
    ``block_layout``: ``post`` (None: the ResNet's, neuron after the residual sum) or ``pre`` (pre-activation
    blocks, see the module); in ``pre`` a branch ends in its second conv, whose initial weights ``residual_bn_init``
    then multiplies (0: the branch starts at zero, timm's ``zero_init_last`` of pre-activation blocks).
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
        block_layout: str | None = None,
    ) -> None:
        if not (math.isfinite(width_multiplier) and width_multiplier > 0):
            raise ConfigError(f"{CONFIG_KEY}.width_multiplier must be a finite number > 0, got {width_multiplier}")
        if residual_bn_init is not None and not math.isfinite(residual_bn_init):
            raise ConfigError(f"{CONFIG_KEY}.residual_bn_init must be a finite number or null, got {residual_bn_init}")
        if block_layout not in (None, *BLOCK_LAYOUTS):
            raise ConfigError(
                f"{CONFIG_KEY}.block_layout must be one of {list(BLOCK_LAYOUTS)} or null, got {block_layout!r}"
            )
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
        self.block_layout = block_layout or "post"
        pre = self.block_layout == "pre"
        arity = self.neuron_spec.arity
        if pre:  # the stem gives the residual stream's pre-activations; a neuron ends the net
            self.stem: nn.Module = nn.Conv2d(self.in_shape[0], arity * self.widths[0], 3, padding=1, bias=False)
        else:
            self.stem = DendriticConvBN2d(self.in_shape[0], self.widths[0], self.make_neuron(), 1, bool(post_neuron_bn))
        block_type = PreActBasicBlock if pre else DendriticBasicBlock
        stages, channels = [], self.widths[0]
        for stage, (units, count) in enumerate(zip(self.widths, blocks)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                stages.append(block_type(channels, units, stride, self.make_neuron, bool(post_neuron_bn)))
                channels = units
        self.stages = nn.Sequential(*stages)
        self.final: nn.Module = (
            PreActivation(channels, self.make_neuron(), bool(post_neuron_bn)) if pre else nn.Identity()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self.residual_bn_init = residual_bn_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's ResNet initialisation of the convolutions (Kaiming normal, fan-out) and BatchNorms (1, 0),
        then ``residual_bn_init`` for each block's branch end (post: the second BatchNorm's weight; pre: a factor on
        the second conv's weights)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.residual_bn_init is not None:
            for block in self.stages:
                if self.block_layout == "pre":
                    block.conv2.weight.data.mul_(self.residual_bn_init)
                else:
                    nn.init.constant_(block.second.bn.weight, self.residual_bn_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = self.final(self.stages(self.stem(self.normalize(x))))
        return self.head(self.drop(self.pool(features).flatten(1)))
