"""One-argument learned activations (``1arg``, ``pau``): the net's shared activation as a curve, and the interval
holding the central 90% of the inputs that reach it (the 1-D counterpart of a surface's region)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lit_dendrite.analysis.surfaces import PAPER_GRID, collect_input_pairs, pixel_batches
from lit_dendrite.nn.neurons import analysed_module, learned_neurons

CURVE_AXIS = PAPER_GRID.axis
"""Where curves are evaluated: the surfaces' axis, 101 points over [-5, 5]."""


@dataclass(frozen=True)
class CurveAnalysis:
    """A learned activation on ``x``; with inputs, the interval holding their central ``mass`` and the RMS distance
    of the activation from ReLU over those inputs (how far training moved a ReLU-initialised unit)."""

    x: np.ndarray
    values: np.ndarray
    interval: tuple[float, float] | None = None
    relu_rms: float | None = None
    mass: float = 0.9


def _activation(net: nn.Module) -> nn.Module:
    """The net's first learned one-argument neuron: it applies the shared activation (one for every layer)."""
    if analysed_module(net, "curve") is None:
        raise ValueError(
            f"{type(net).__name__} has no learned one-argument activation; curves exist for neurons whose analysis "
            "is the curve (1arg, pau)"
        )
    return next(iter(learned_neurons(net).values()))


@torch.no_grad()
def evaluate_curve(net: nn.Module, x: np.ndarray = CURVE_AXIS) -> np.ndarray:
    """The net's learned one-argument activation at the points ``x`` (eval mode, exact)."""
    neuron = _activation(net)
    parameter = next(neuron.parameters())
    points = torch.as_tensor(np.asarray(x, dtype=float)).to(parameter)
    was_training = neuron.training
    neuron.eval()
    try:
        return neuron(points.unsqueeze(-1)).double().cpu().numpy()
    finally:
        neuron.train(was_training)


def analyse_curve(
    net: nn.Module, images: np.ndarray, mass: float = 0.9, max_inputs: int = 50_000, seed: int = 0
) -> CurveAnalysis:
    """The activation curve of a trained net and the inputs its neurons see on ``images`` (uint8 (N, H, W, C)),
    pooled over layers: their central ``mass`` interval and the activation's RMS distance from ReLU on them."""
    if not 0 < mass < 1:
        raise ValueError(f"mass must lie in (0, 1), got {mass}")
    _activation(net)
    inputs = collect_input_pairs(net, pixel_batches(images), max_pairs=max_inputs, seed=seed)
    pooled = np.concatenate(list(inputs.values()))[:, 0]
    tail = (1 - mass) / 2
    low, high = np.quantile(pooled, [tail, 1 - tail])
    on_inputs = evaluate_curve(net, pooled)
    relu_rms = float(np.sqrt(np.mean((on_inputs - np.maximum(pooled, 0)) ** 2)))
    return CurveAnalysis(CURVE_AXIS, evaluate_curve(net), (float(low), float(high)), relu_rms, mass)
