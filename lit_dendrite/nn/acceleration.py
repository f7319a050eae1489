"""Whole-network speed options: ``torch.compile`` on request (bf16 is the Trainer's ``precision`` flag)."""

from __future__ import annotations

from torch import nn


def maybe_compile(net: nn.Module, enabled: bool, **options: object) -> nn.Module:
    """Compile ``net`` in place (``nn.Module.compile``, so state-dict keys stay unchanged) when ``enabled``.

    Inside the compiled graph the inner net takes its plain implementation (see ``choose_impl``), which
    Inductor fuses; the first steps pay the compile time. Returns ``net``.
    """
    if enabled:
        net.compile(**options)
    return net
