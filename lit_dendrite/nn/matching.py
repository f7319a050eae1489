"""Parameter matching: pick a control's widths so its parameter count equals a reference network's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


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
    has the parameter count of ``build(**kwargs | reference)`` within ``tolerance`` (relative)."""
    base = [int(w) for w in reference["widths"]]
    if not base or min(base) < 1:
        raise ValueError(f"reference widths must be positive integers, got {list(reference['widths'])}")
    target = _count_on_meta(build, **{**kwargs, **reference})

    def widths_for(scale: float) -> list[int]:
        return [max(1, round(scale * w)) for w in base]

    def count(scale: float) -> int:
        return count_widths(build, kwargs, widths_for(scale))

    low, high = 1e-3, 1.0
    while count(high) < target:
        high *= 2
        if high > 1e4:
            raise ValueError(f"cannot reach {target} parameters by scaling widths {base}")
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if count(mid) < target else (low, mid)
    best = min((widths_for(s) for s in (low, high)), key=lambda w: abs(count_widths(build, kwargs, w) - target))
    error = abs(count_widths(build, kwargs, best) - target) / target
    if error > tolerance:
        raise ValueError(
            f"no uniform scaling of widths {base} matches {target} parameters within {tolerance:.1%} "
            f"(best {best}, off by {error:.2%}); give the widths explicitly instead"
        )
    return best


def count_widths(build: Callable[..., nn.Module], kwargs: dict[str, Any], widths: Sequence[int]) -> int:
    """Parameter count of ``build(**kwargs, widths=widths)``, computed without allocating weights."""
    return _count_on_meta(build, **{**kwargs, "widths": list(widths)})
