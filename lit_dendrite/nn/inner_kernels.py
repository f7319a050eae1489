"""Exact evaluation of the inner net: a plain reference, a memory-lean autograd function and the fused op.

The lean and fused paths keep the ``(rows, arity)`` inputs for backward and recompute the hidden activations there,
so no ``(rows, 64)`` tensor of the whole layer ever exists: ``lean`` in torch ops, one cache-sized chunk of rows at a
time (any device, dtype and depth), ``fused`` as the custom op of :mod:`lit_dendrite.nn.inner_op` (two hidden layers
of multiples of 16 units: the native C kernel on float32 CPU tensors, a Triton kernel on CUDA), which also fuses the
elementwise work into the matrix products and keeps the signs of the last hidden layer (1 bit per unit) instead of
recomputing it (``fused_bf16``: the same op with bf16 products and float32 accumulation, on CPU); in the dendritic
layers it also takes over their LayerNorm, so that it keeps the LayerNorm's input
instead of its output (:func:`fused_normalized_inner`). Their inputs are rows of ``arity`` adjacent values: the
dendritic layers lay their pre-activations out that way (conv maps channels-last), so nothing is copied; any other
layout costs one copy of the inputs. ``choose_impl`` documents the rule that picks an implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_dendrite.nn import inner_op, native
from lit_dendrite.nn.inner_check import PATHS, fused_unusable, specialisation
from lit_dendrite.nn.inner_op import output_layer_grads

IMPLS = ("auto", "plain", "lean", "fused", "fused_bf16")
FUSED_IMPLS = ("fused", "fused_bf16")
"""The implementations that run the fused op (``fused_bf16`` with bf16 products), indexed by ``int(bf16)`` (torch 2.11's
compile refuses a bool index)."""

# Rows per chunk: a chunk's (rows, 64) buffers should stay in the CPU's L2 cache. On our 2-core Xeon (1 thread,
# the CNN's first layer, fwd+bwd) 2048 rows took 385-395 ns/row, 1024 and 4096 400-480, 8192 420-440; the issue's
# CPU preferred ~16k. On a GPU a chunk only has to fill the device (256k rows: 1 GFLOP per 64x64 matmul) and bounds
# the extra memory, about 1 KiB per row of chunk buffers: 256 MiB (untuned: no GPU was available).
DEFAULT_CHUNK_ROWS = {"cpu": 2048, "cuda": 1 << 18}
# Below this many rows the plain implementation is used: it skips the recompute and the per-chunk Python work.
# CPU, 1 thread, fwd+bwd of one InnerNet(2) call, median of 15x5: lean/plain time 1.30 at 2048 rows, 0.74 at
# 8192, 0.51 at 32768; the paper MLP (12.8k-row layers) trains 5.4-5.9x its ReLU control lean, 7.9-8.3x plain.
LEAN_MIN_ROWS = {"cpu": 1 << 12, "cuda": 1 << 22}
# The fused op's threshold. The native CPU kernel breaks even with plain around 1000-4096 rows (1.6x plain's time
# at 64, 0.94 at 4096, 0.52 at 12800). On CUDA one Triton launch replaces plain's six kernels and their (rows, 64)
# intermediates at any size (unmeasured: no GPU was available).
FUSED_MIN_ROWS = {"cpu": 1 << 12, "cuda": 1}


def default_chunk_rows(device: torch.device) -> int:
    """The tuned chunk size for ``device`` (CPU value for unknown device types)."""
    return DEFAULT_CHUNK_ROWS.get(device.type, DEFAULT_CHUNK_ROWS["cpu"])


def choose_impl(x: torch.Tensor, linears: Sequence[nn.Linear]) -> str:
    """The rule behind ``impl="auto"`` for inputs ``x`` (rows of ``arity`` along some dim): ``fused`` where the op
    can run and passed its self-check on this device (:func:`~lit_dendrite.nn.inner_check.fused_unusable`) and the
    problem is not small (``FUSED_MIN_ROWS``), also under autocast (CPU: bf16 and fp16 inputs cast to float32) and
    torch.compile, and ``fused_bf16`` instead under CPU bf16 autocast where the CPU multiplies bf16 (AVX512-BF16,
    :func:`~lit_dendrite.nn.native.bf16_hardware`; :func:`bf16_products`); otherwise ``plain`` under autocast,
    torch.compile or for small problems (``LEAN_MIN_ROWS``), ``lean`` elsewhere. A large problem that the fused op
    cannot take is a fallback: warned once and noted with its reason in the path log (``PATHS``).

    The fused op keeps its path under autocast and compile because it is a registered custom op (with a fake
    implementation and an autograd formula); ``lean`` is a Python autograd function whose hand-written backward
    neither autocast nor compile rewrites, so there the plain layers (which both do rewrite: bf16 casts, fusion) run.
    Small problems get the plain layers because their activations are small.
    """
    device = x.device
    rows = x.numel() // linears[0].in_features
    autocast = device.type != "meta" and torch.is_autocast_enabled(device.type)  # meta: a memory estimate's pass
    if torch.compiler.is_compiling() or autocast:
        torch_path = "plain"
    else:
        torch_path = "plain" if rows < LEAN_MIN_ROWS.get(device.type, LEAN_MIN_ROWS["cpu"]) else "lean"
    if device.type == "meta":  # a memory estimate's pass: no kernel runs, so nothing falls back or is noted
        return torch_path
    if rows < FUSED_MIN_ROWS.get(device.type, FUSED_MIN_ROWS["cpu"]):
        PATHS.note("auto", torch_path)
        return torch_path
    params = inner_params(linears)
    bf16 = bf16_products(device)
    if (reason := fused_unusable(x, params, bf16)) is not None:
        PATHS.fell_back(specialisation(x, params, bf16), torch_path, reason)
        return torch_path
    impl = FUSED_IMPLS[int(bf16)]
    PATHS.note("auto", impl)
    return impl


def bf16_products(device: torch.device) -> bool:
    """Whether ``impl="auto"`` gives the fused op bf16 products on ``device``: the native CPU kernel under CPU bf16
    autocast, where the CPU multiplies bf16 (AVX512-BF16; its float32 emulation elsewhere is slower than float32)."""
    if inner_op.backend(device) != "native" or not torch.is_autocast_enabled("cpu"):
        return False
    return torch.get_autocast_dtype("cpu") == torch.bfloat16 and native.bf16_hardware()


def plain_inner(x: torch.Tensor, linears: Sequence[nn.Linear]) -> torch.Tensor:
    """Reference evaluation: ordinary autograd through ``Linear -> ReLU -> ... -> Linear`` on the last dim."""
    for linear in linears[:-1]:
        x = torch.relu(linear(x))
    return linears[-1](x).squeeze(-1)


def lean_inner(x: torch.Tensor, dim: int, linears: Sequence[nn.Linear], chunk_rows: int) -> torch.Tensor:
    """Memory-lean exact evaluation along ``dim`` (removed from the output), ``chunk_rows`` rows at a time."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    rows = x.movedim(dim, -1)
    out = _LeanInner.apply(rows.reshape(-1, rows.shape[-1]), chunk_rows, *inner_params(linears))
    return out.view(rows.shape[:-1])


def fused_inner(x: torch.Tensor, dim: int, linears: Sequence[nn.Linear], bf16: bool = False) -> torch.Tensor:
    """The exact evaluation along ``dim`` by the fused op (:mod:`lit_dendrite.nn.inner_op`: the native kernel on CPU,
    with ``bf16`` products, or Triton on CUDA); a clear error where it cannot run."""
    params = _fused_params(x, linears, bf16)
    rows = x.movedim(dim, -1)
    out = inner_op.fused_inner_net(rows.reshape(-1, rows.shape[-1]), 0, 0.0, params, bf16)
    return out.view(rows.shape[:-1])


def fused_normalized_inner(
    z: torch.Tensor, normalized_ndim: int, params: Sequence[torch.Tensor], eps: float, bf16: bool = False
) -> torch.Tensor:
    """LayerNorm (no affine, epsilon ``eps``) of ``z`` over its last ``normalized_ndim`` dims, then the inner net on
    each group of ``arity`` adjacent features of the last dim (which shrinks by ``arity``), by the fused op (with
    ``bf16`` products). ``params``: the inner net's (:func:`inner_params`), or K cell types' stacked along a leading
    dim, type k serving the k-th block of units (:func:`~lit_dendrite.nn.inner_op.cell_type_blocks`; CPU only).

    Backward recomputes the LayerNorm, so a layer keeps only ``z`` (which its LayerNorm would keep anyway), the
    statistics and the signs of the inner net's last hidden layer.
    """
    params = list(params)
    if (reason := fused_unusable(z, params, bf16)) is not None:
        raise ValueError(
            f"InnerNet.impl={FUSED_IMPLS[int(bf16)]!r} cannot run here: {reason}; use impl='auto' (it falls back)"
        )
    if z.shape[-1] % params[0].shape[-1]:
        raise ValueError(f"the last dim of {tuple(z.shape)} is not a multiple of arity {params[0].shape[-1]}")
    return inner_op.fused_inner_net(z, normalized_ndim, eps, params, bf16)


def _fused_params(x: torch.Tensor, linears: Sequence[nn.Linear], bf16: bool) -> list[torch.Tensor]:
    params = inner_params(linears)
    if (reason := fused_unusable(x, params, bf16)) is not None:
        raise ValueError(
            f"InnerNet.impl={FUSED_IMPLS[int(bf16)]!r} cannot run here: {reason}; use impl='auto' (it falls back)"
        )
    return params


def inner_params(linears: Sequence[nn.Linear]) -> list[torch.Tensor]:
    """An inner net's parameters in the fused op's order: ``[W1, b1, W2, b2, ...]``."""
    return [t for linear in linears for t in (linear.weight, linear.bias)]


class _ChunkViews:
    """Views of the chunk buffers for ``n`` rows: ``with_ones`` (layer inputs with their ones column),
    ``inputs`` (the same without it), ``last`` (pre-activations of the last hidden layer), ``grads`` (and the
    transposed views that the weight gradients multiply by)."""

    def __init__(self, inputs: list[torch.Tensor], last: torch.Tensor, grads: list[torch.Tensor], n: int) -> None:
        self.with_ones = [x[:n] for x in inputs]
        self.inputs = [x[:, :-1] for x in self.with_ones]
        self.first_with_ones_t = self.with_ones[0].t()
        self.last = last[:n]
        self.grads = [g[:n] for g in grads]
        self.grads_t = [g.t() for g in self.grads]


class _Chunk:
    """Buffers for one chunk of rows, allocated once per call and reused for every chunk (a fresh 1 MiB tensor
    per op and chunk costs more in page faults than the op on CPU), and the layer inputs with their biases folded
    in: each layer's input buffer carries a trailing column of ones and its weight matrix the bias as a last row,
    so one matmul adds the bias (``addmm`` would copy it into the output first). Views are made once per chunk
    size, not per chunk; the gradient buffers only exist for backward (``gradients``)."""

    def __init__(
        self, rows: torch.Tensor, chunk_rows: int, weights: Sequence[torch.Tensor], gradients: bool = False
    ) -> None:
        widths = [rows.shape[1], *(w.shape[0] for w in weights[:-1])]
        # Inputs of every layer but the output (with a ones column), then the last hidden pre-activations.
        self._inputs = [rows.new_ones(chunk_rows, width + 1) for width in widths[:-1]]
        self._last = rows.new_empty(chunk_rows, widths[-1])
        self._grads = [rows.new_empty(chunk_rows, width) for width in widths[1:]] if gradients else []
        self._views: dict[int, _ChunkViews] = {}

    def forward(self, rows: torch.Tensor, weights_aug: Sequence[torch.Tensor]) -> _ChunkViews:
        """The hidden layers on one chunk of rows; the returned views hold the layer inputs
        ``[rows, relu(layer1), ...]`` and the last hidden layer's pre-activations (backward needs their sign)."""
        n = len(rows)
        if n not in self._views:
            self._views[n] = _ChunkViews(self._inputs, self._last, self._grads, n)
        views = self._views[n]
        views.inputs[0].copy_(rows)
        for i, weight_aug in enumerate(weights_aug):
            target = views.inputs[i + 1] if i + 1 < len(views.inputs) else views.last
            torch.mm(views.with_ones[i], weight_aug, out=target)
            if i + 1 < len(views.inputs):
                target.relu_()
        return views


def _augmented(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[W^T; b]`` per layer: the right operand that adds the bias to an input with a ones column."""
    return [torch.cat([w.t(), b.unsqueeze(0)]) for w, b in zip(weights, biases)]


class _LeanInner(torch.autograd.Function):
    """``(rows, chunk_rows, w1, b1, ..., wL, bL) -> inner(rows)`` saving only ``rows`` for backward.

    Backward recomputes the hidden layers but needs neither the ReLU output of the last one nor its product
    with the output weights: with ``G = g * [h_L > 0]`` (``h_L`` its pre-activations, ``g`` the output
    gradient, ``w`` the output weights), ``dW_L = w * (G^T a_{L-1})``, ``db_L = w * sum(G)``,
    ``dw = rowsum(W_L * (G^T a_{L-1})) + b_L * sum(G)`` and the gradient below is ``G @ (w * W_L)``, which saves
    three elementwise passes per chunk. The first layer's thin products (``arity`` columns) run transposed,
    which BLAS does 3-4x faster here.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, chunk_rows: int, *params: torch.Tensor) -> torch.Tensor:
        weights, biases = params[0::2], params[1::2]
        chunk_rows = min(chunk_rows, len(rows)) or 1
        chunk = _Chunk(rows, chunk_rows, weights)
        weights_aug = _augmented(weights[:-1], biases[:-1])
        out = rows.new_empty(len(rows))
        with torch.no_grad():
            for rows_part, out_part in zip(rows.split(chunk_rows), out.split(chunk_rows)):
                hidden = chunk.forward(rows_part, weights_aug).last.relu_()
                torch.addmv(biases[-1], hidden, weights[-1][0], out=out_part)
        ctx.save_for_backward(rows, *params)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, *params = ctx.saved_tensors
        weights, biases = params[0::2], params[1::2]
        hidden, out_weight = weights[:-1], weights[-1][0]
        need_x = ctx.needs_input_grad[0]
        need_params = any(ctx.needs_input_grad[2:])
        depth = len(hidden)
        chunk = _Chunk(rows, ctx.chunk_rows, weights, gradients=True)
        weights_aug = _augmented(hidden, biases[:-1])
        # Products the backward multiplies by: the output weight folded into the last hidden layer (G @ that is
        # the gradient below it), and the first layer transposed for the thin input gradient.
        below = [*hidden[:-1], out_weight.unsqueeze(1) * hidden[-1]]
        first_t = below[0].t().contiguous()
        grad_x_t = rows.new_empty(rows.shape[1], len(rows)) if need_x else None
        # First layer: [dW^T; db^T] accumulated transposed, from the input with its ones column.
        grad_first = torch.zeros_like(weights_aug[0]) if need_params else None
        grad_w = [torch.zeros_like(w) for w in hidden[1:]] if need_params else None
        grad_b = [torch.zeros_like(b) for b in biases[1:-1]] if need_params else None
        # Per-chunk pieces made in one call each; grad_out as a column broadcasts over the last hidden layer.
        grad_parts = grad_out.unsqueeze(1).split(ctx.chunk_rows)
        grad_x_parts = grad_x_t.split(ctx.chunk_rows, dim=1) if need_x else [None] * len(grad_parts)
        for rows_part, grad_part, grad_x_part in zip(rows.split(ctx.chunk_rows), grad_parts, grad_x_parts):
            views = chunk.forward(rows_part, weights_aug)
            g_pre = torch.ops.aten.threshold_backward.grad_input(grad_part, views.last, 0, grad_input=views.grads[-1])
            g_pre_t = views.grads_t[-1]
            for i in range(depth - 1, -1, -1):
                if need_params and i == 0:
                    grad_first.addmm_(views.first_with_ones_t, g_pre)
                elif need_params:
                    grad_w[i - 1].addmm_(g_pre_t, views.inputs[i])
                    grad_b[i - 1].add_(g_pre.sum(0))
                if i == 0:
                    if need_x:
                        torch.mm(first_t, g_pre_t, out=grad_x_part)
                    break
                g_pre, g_pre_t = torch.mm(g_pre, below[i], out=views.grads[i - 1]), views.grads_t[i - 1]
                torch.ops.aten.threshold_backward.grad_input(g_pre, views.inputs[i], 0, grad_input=g_pre)
        grad_x = grad_x_t.t() if need_x else None
        if not need_params:
            return (grad_x, None, *[None] * len(params))
        grad_w.insert(0, grad_first[:-1].t())
        grad_b.insert(0, grad_first[-1])
        # The last hidden layer's sums were taken with G, not with the output weight folded in (see above).
        grad_w[-1], grad_b[-1], grad_out_weight = output_layer_grads(
            hidden[-1], biases[-2], out_weight, grad_w[-1], grad_b[-1]
        )
        grad_params = [t for pair in zip(grad_w, grad_b) for t in pair]
        return (grad_x, None, *grad_params, grad_out_weight, grad_out.sum().reshape(1))
