"""The memory training a net takes, estimated on the ``meta`` device before any of it is allocated.

A width typed with a few zeros too many (two billion units) would otherwise ask for terabytes and fail deep inside
an allocator, or swap the machine to a halt; the estimate lets the command refuse it first, naming the keys.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

TRAINED_COPIES = 4
"""Copies of every parameter training holds: the weights, their gradients and Adam's two moments."""
SAVED_FOR_BACKWARD = 2
"""Activations are counted twice: the outputs kept for the backward pass and the gradients flowing through them."""


def training_bytes(net: nn.Module, in_shape: Sequence[int], batch_size: int) -> tuple[int, int]:
    """``(bytes, parameters)``: about what training ``net`` (built on the meta device) needs at ``batch_size``:
    :data:`TRAINED_COPIES` of its parameters plus the outputs of its leaf modules on one batch, counted
    :data:`SAVED_FOR_BACKWARD` times (parameters only where the forward pass cannot run on the meta device). The
    outputs are those of one image times ``batch_size``: a whole batch would take the chunked paths of the inner net,
    whose Python loop over chunks takes minutes even on the meta device."""
    parameters = sum(p.numel() for p in net.parameters())
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    outputs = 0

    def count(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal outputs
        if isinstance(output, torch.Tensor):
            outputs += output.numel() * output.element_size()

    # the shared inner net's hidden layers are left out: the fused and lean paths recompute them instead of keeping
    # them (on the meta device, at one image, the plain path runs and would count them)
    inner = getattr(net, "inner", None)
    inside = set(inner.modules()) if isinstance(inner, nn.Module) else set()
    counted = [m for m in net.modules() if m not in inside and not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in counted]
    try:
        with torch.no_grad():
            net(torch.empty(1, *in_shape, device="meta"))
    except Exception:  # a custom op without a meta kernel: the parameters still bound the estimate from below
        outputs = 0
    finally:
        for hook in hooks:
            hook.remove()
    return TRAINED_COPIES * weights + SAVED_FOR_BACKWARD * batch_size * outputs, parameters


def device_memory(accelerator: str | None) -> tuple[str, int]:
    """``(name, bytes)`` of the memory a Trainer with ``accelerator`` trains in: the first CUDA device's where it
    would use one, else the machine's physical memory."""
    if str(accelerator or "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "CUDA device 0", torch.cuda.get_device_properties(0).total_memory
    return "this machine", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def format_bytes(count: float) -> str:
    """``12.3 GB``-style text."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"
