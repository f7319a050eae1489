"""The ``pau`` neuron: a learned rational activation, one per net, shared by every unit like the inner net.

Padé Activation Unit in its "safe" form (A. Molina, P. Schramowski, K. Kersting, "Padé Activation Units: End-to-end
Learning of Flexible Activation Functions in Deep Networks", ICLR 2020, eq. 3):
``F(x) = P(x) / (1 + |Q(x)|)`` with ``P(x) = a0 + a1 x + ... + a5 x^5`` and ``Q(x) = b1 x + ... + b4 x^4`` (no constant
term, so the denominator is at least 1 and F has no poles). Degrees 5/4 as in the paper.

Initialisation: the least-squares fit of F to ReLU on 1201 evenly spaced points over [-3, 3] (float64, L-BFGS from
random starts; every start reached the same optimum, mean squared error 3.1e-5, largest error 0.034 at x = 0;
``tests/test_pau.py`` checks that the rounded coefficients are still a stationary point of that fit). We fitted them
ourselves rather than take the published ones, which approximate leaky ReLU. Outside [-3, 3] the fit tends to
0.5 x + 3.1 on both sides (a rational function has one asymptote): LayerNorm keeps nearly all pre-activations inside
the fitted range.

Protocol: no session I (the unit starts from its ReLU fit, the paper's practice; pretraining it to a random smooth
function would discard that), trained jointly with the outer net in session II, and frozen in session III at its
best session-II coefficients while the re-initialised outer net trains again, as the inner net is: sessions then
compare across neurons. The coefficients are ``net.inner.numerator`` / ``net.inner.denominator`` in checkpoints.
The analysis is its 1-D curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_dendrite.errors import ConfigError
from lit_dendrite.nn.neurons import NeuronSpec, SharedNeuron, register_neuron

BACKWARD_CHUNK = 1 << 18
"""Elements per chunk of the backward pass (a few MiB of intermediates per chunk in float32)."""
RELU_NUMERATOR = (0.0339174, 0.4999999, 1.6689134, 1.9871034, 0.9391452, 0.1504456)
"""``a0..a5`` of the least-squares fit to ReLU on [-3, 3] (see the module docstring)."""
RELU_DENOMINATOR = (0.0, -3.9742065, 0.0, -0.3008912)
"""``b1..b4`` of that fit (b1 and b3 came out below 1e-6 and are rounded to 0: the fit's |Q| is even)."""


def _numerator(x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``P(x)`` and ``P'(x)`` by Horner's rule."""
    value, slope = a[-1] * torch.ones_like(x), torch.zeros_like(x)
    for coefficient in reversed(a[:-1]):
        slope = slope * x + value
        value = value * x + coefficient
    return value, slope


def _denominator_polynomial(x: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q(x) = b1 x + ... + bn x^n`` and ``Q'(x)``."""
    inner, inner_slope = _numerator(x, b)  # b1 + b2 x + ... + bn x^(n-1)
    return inner * x, inner_slope * x + inner


class SafePade(torch.autograd.Function):
    """``P(x) / (1 + |Q(x)|)`` that saves only its inputs for backward and recomputes the rest there, chunk by chunk:
    plain autograd would keep about fifteen activation-sized intermediates per layer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, a, b)
        a, b = a.to(x.dtype), b.to(x.dtype)
        q = x * b[-1]
        for coefficient in reversed(b[:-1]):
            q = (q + coefficient) * x
        p = x * a[-1]
        for coefficient in reversed(a[1:-1]):
            p = (p + coefficient) * x
        return (p + a[0]) / (1 + q.abs())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, a, b = ctx.saved_tensors
        coefficients = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
        grad_x = torch.empty_like(flat_x) if ctx.needs_input_grad[0] else None
        total = torch.promote_types(x.dtype, torch.float32)  # half-precision activations sum in float32
        sums = torch.zeros(len(a) + len(b), dtype=total, device=x.device)
        # chunks bound the recomputed intermediates (about ten per element) to BACKWARD_CHUNK elements each
        for start in range(0, flat_x.numel(), BACKWARD_CHUNK):
            xs, gs = flat_x[start : start + BACKWARD_CHUNK], flat_grad[start : start + BACKWARD_CHUNK]
            p, p_slope = _numerator(xs, a.to(x.dtype))
            q, q_slope = _denominator_polynomial(xs, b.to(x.dtype))
            scale = gs / (1 + q.abs())  # dF/dP times the incoming gradient
            ratio_slope = scale * p * torch.sign(q) / (1 + q.abs())  # minus dF/d|Q| times the incoming gradient
            if grad_x is not None:
                grad_x[start : start + len(xs)] = scale * p_slope - ratio_slope * q_slope
            if coefficients:
                power, terms_a, terms_b = torch.ones_like(xs), [], []
                for degree in range(max(len(a), len(b) + 1)):
                    if degree < len(a):
                        terms_a.append((scale * power).sum(dtype=total))
                    if 1 <= degree <= len(b):
                        terms_b.append(-(ratio_slope * power).sum(dtype=total))
                    power = power * xs
                sums += torch.stack(terms_a + terms_b)
        grad_a = sums[: len(a)].to(a.dtype) if coefficients else None
        grad_b = sums[len(a) :].to(b.dtype) if coefficients else None
        return None if grad_x is None else grad_x.view(x.shape), grad_a, grad_b


class PadeActivation(nn.Module):
    """The safe PAU, elementwise: learned ``numerator`` ``a0..a5`` and ``denominator`` ``b1..b4`` (ReLU fit at init)."""

    arity = 1

    def __init__(
        self, numerator: Sequence[float] = RELU_NUMERATOR, denominator: Sequence[float] = RELU_DENOMINATOR
    ) -> None:
        super().__init__()
        if len(numerator) < 2 or len(denominator) < 1:
            raise ConfigError(f"a PAU needs degrees >= 1 above and below, got {list(numerator)} / {list(denominator)}")
        self.numerator = nn.Parameter(torch.tensor(numerator, dtype=torch.float32))
        self.denominator = nn.Parameter(torch.tensor(denominator, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SafePade.apply(x, self.numerator, self.denominator)

    def extra_repr(self) -> str:
        return f"degrees={len(self.numerator) - 1}/{len(self.denominator)}"


class PadeNeuron(SharedNeuron):
    """A one-argument neuron that applies the net's shared :class:`PadeActivation`."""

    def __init__(self, pau: PadeActivation) -> None:
        super().__init__(pau, 1)

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        self._check(x, dim)
        return self.inner(x.squeeze(dim))


register_neuron(
    "pau",
    NeuronSpec(
        1,
        build=PadeNeuron,
        shared=lambda hidden, options: PadeActivation(),
        freeze=True,
        analysis="curve",
    ),
)
