"""Parameter matching: pick a control's widths so its parameter count equals a reference network's, or take the
widths the paper gives its controls (:data:`PAPER_CONTROL_WIDTHS`)."""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lit_dendrite.data.datasets import NET_ARGS
from lit_dendrite.errors import ConfigError

PAPER_REFERENCE_NEURON = "2arg"
PAPER_CONTROL_WIDTHS: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {
    ("DendriticMLP", "mnist"): {"1arg": (114, 114, 114), "relu": (118, 118, 118)},
    ("DendriticMLP", "cifar10"): {"1arg": (123, 123, 123), "relu": (124, 124, 124)},
    ("DendriticCNN", "cifar10"): {"1arg": (65, 150, 180, 240), "relu": (120, 150, 170, 170)},
}
"""``{(net, data set): {neuron: widths}}``: the widths the paper gives a control, which its authors matched to the
2-arg net of the paper's architecture (the net's defaults). A control matched to that net (``match_neuron: 2arg``)
gets these instead of :func:`match_width`'s; every other control is matched by :func:`match_width`."""
NOT_PAPER_ARCHITECTURE = ("neuron", "match_neuron", "dropout", *NET_ARGS)
"""Arguments of a net that a row of :data:`PAPER_CONTROL_WIDTHS` does not fix: the control's neuron, dropout (no
parameters) and the data set's facts (the data set is part of the row's key)."""


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters (a shared inner net counts once)."""
    return sum(p.numel() for p in module.parameters())


def _count_on_meta(build: Callable[..., nn.Module], **kwargs: Any) -> int:
    with torch.device("meta"):
        return count_parameters(build(**kwargs))


def match_width(
    build: Callable[..., nn.Module],
    kwargs: dict[str, Any],
    reference: dict[str, Any],
    tolerance: float = 0.01,
) -> list[int]:
    """Widths ``w = round(s * reference["widths"])`` for one factor ``s`` so that ``build(**kwargs, widths=w)``
    has the parameter count of ``build(**kwargs | reference)`` within ``tolerance`` (relative).

    Where rounding the widths of that one factor misses, each width may be rounded down or up on its own; where one
    unit of the first layer costs more than the tolerance allows (a KAN layer on 784 pixels: 9 parameters
    per pixel and unit, 6% of the paper MLP's count), no single factor can match; then the first width stays at the
    single factor's width rounded down and the later widths are scaled by a second factor to take up the rest.
    """
    base = [int(w) for w in reference["widths"]]
    if not base or min(base) < 1:
        raise ConfigError(f"reference widths must be positive integers, got {list(reference['widths'])}")
    target = _count_on_meta(build, **{**kwargs, **reference})

    def error(widths: list[int]) -> float:
        return abs(count_widths(build, kwargs, widths) - target) / target

    scale = _closest_scale(lambda s: [s * w for w in base], build, kwargs, target)
    best = _rounded([scale * w for w in base])
    if error(best) > tolerance:  # each width rounded down or up on its own
        bounds = [(max(1, math.floor(scale * w)), max(1, math.ceil(scale * w))) for w in base]
        best = min((list(widths) for widths in itertools.product(*bounds)), key=error)
    if error(best) > tolerance and len(base) > 1:
        first = max(1, math.floor(scale * base[0]))
        rest = _closest_scale(lambda s: [first, *(s * w for w in base[1:])], build, kwargs, target)
        best = min(best, _rounded([first, *(rest * w for w in base[1:])]), key=error)
    if error(best) > tolerance:
        raise ConfigError(
            f"no scaling of widths {base} matches {target} parameters within {tolerance:.1%} "
            f"(best {best}, off by {error(best):.2%}); give the widths explicitly instead"
        )
    return best


def _rounded(widths: Sequence[float]) -> list[int]:
    return [max(1, round(w)) for w in widths]


def _closest_scale(
    widths_for: Callable[[float], list[float]], build: Callable[..., nn.Module], kwargs: dict[str, Any], target: int
) -> float:
    """The factor ``s`` whose rounded ``widths_for(s)`` comes closest to ``target`` parameters (bisection)."""

    def count(scale: float) -> int:
        return count_widths(build, kwargs, _rounded(widths_for(scale)))

    low, high = 1e-3, 1.0
    while count(high) < target:
        high *= 2
        if high > 1e4:
            raise ConfigError(f"cannot reach {target} parameters by scaling widths {widths_for(1.0)}")
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if count(mid) < target else (low, mid)
    return min((low, high), key=lambda s: abs(count(s) - target))


def count_widths(build: Callable[..., nn.Module], kwargs: dict[str, Any], widths: Sequence[int]) -> int:
    """Parameter count of ``build(**kwargs, widths=widths)``, computed without allocating weights."""
    return _count_on_meta(build, **{**kwargs, "widths": list(widths)})


def settled_widths(net: type[nn.Module], dataset: str, args: Mapping[str, Any]) -> tuple[list[int], str | None]:
    """The ``(widths, match_neuron)`` that a net configured with ``args`` (its constructor arguments) on ``dataset``
    is built with, spelled so that one net has one configuration: a net matched to its own neuron is that net
    (no matching); a control of the paper's architecture matched to its 2-arg net gets the paper's widths
    (:data:`PAPER_CONTROL_WIDTHS`); any other control keeps ``match_neuron`` (matched when built)."""
    widths, match = list(args["widths"]), args.get("match_neuron")
    if match is None or match == args["neuron"]:
        return widths, None
    paper = PAPER_CONTROL_WIDTHS.get((net.__name__, dataset), {}).get(args["neuron"])
    if paper is None or match != PAPER_REFERENCE_NEURON or not _paper_architecture(net, args):
        return widths, match
    return list(paper), None


def _paper_architecture(net: type[nn.Module], args: Mapping[str, Any]) -> bool:
    """Whether ``args`` give ``net`` its default (the paper's) architecture, widths included."""

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(net).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name not in NOT_PAPER_ARCHITECTURE
    }
    return all(plain(args.get(name, default)) == plain(default) for name, default in defaults.items())
