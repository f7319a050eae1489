"""Whole-network speed options: ``torch.compile`` on request (bf16 is the Trainer's ``precision`` flag)."""

from __future__ import annotations

from torch import nn


def maybe_compile(net: nn.Module, enabled: bool, **options: object) -> nn.Module:
    """Compile ``net`` in place (``nn.Module.compile``, so state-dict keys stay unchanged) when ``enabled``.

    Inside the compiled graph the inner net stays on its fused op where that can run (one graph node), else takes
    its plain implementation, which Inductor fuses (see ``choose_impl``); the first steps pay the compile time.
    Returns ``net``.
    """
    if enabled:
        net.compile(**options)
    return net
