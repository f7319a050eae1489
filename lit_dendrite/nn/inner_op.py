"""The fused exact inner net as one torch custom op, ``lit_dendrite::inner_net``, with two backends.

The op evaluates an inner net of two hidden layers (``w1, b1, w2, b2, w3, b3``) on each group of ``arity`` adjacent
features of ``z``'s last dim, optionally after a LayerNorm (no affine) over its last ``normalized_ndim`` dims: the
dendritic layers' nonlinearity, ``normalized_ndim`` 0 for the bare inner net. It returns ``(out, signs, mean,
rstd)``: the values in ``z``'s dtype, the signs of the last hidden layer as int16 words of 16 units (empty unless
``keep_signs``) and the LayerNorm's statistics (empty without one). Its backward is a second op,
``lit_dendrite::inner_net_backward``, which keeps ``z``, the statistics and the signs, recomputes the LayerNorm and
the first hidden layer, and returns every gradient.

Backends, by the device of ``z`` (:func:`backend`): the native C kernel on CPU (:mod:`lit_dendrite.nn.native`,
float32 inputs, and with ``bf16`` its bf16 products with float32 accumulation) and the Triton kernel on CUDA
(:mod:`lit_dendrite.nn.inner_triton`, float32/tf32, bf16 and fp16 inputs).
With ``TRITON_INTERPRET=1`` set before Triton is imported, CPU tensors take the Triton kernels too, run by Triton's
interpreter (slow: for tests and debugging). Both ops have fake (meta) implementations and the forward op an
autograd formula, so ``torch.compile`` traces them as single nodes and autocast passes them through (the inputs
keep the dtype autocast gave them: the native kernel casts bf16 and fp16 ones to float32 inside, keeping the half
precision input for backward), instead of falling back to the plain layers.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from lit_dendrite.errors import ConfigError
from lit_dendrite.nn import native
from lit_dendrite.nn.native import SIGN_BITS

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The Triton kernels' input offsets are int32 and stay below the input's size; the sign offsets, which grow to
# (h2 / 16) per row of ``arity`` values, are int64 (``inner_triton.sign_offsets``).
MAX_TRITON_VALUES = 2**31


def triton_interpreted() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): CPU tensors then take the Triton backend."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def backend(device: torch.device) -> str | None:
    """The backend of the op for tensors on ``device``: ``native``, ``triton`` or None (no fused kernel there)."""
    if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
        return "triton"
    return "native" if device.type == "cpu" else None


def shape_mismatch(params: Sequence[torch.Tensor]) -> str | None:
    """Why no backend of the op can hold the inner net ``params`` (W1, b1, W2, b2, w3, b3, or cell types' stacked
    along a leading dim), or None: the sign words of the last hidden layer hold 16 units each, so a width that is no
    multiple of 16 would lose gradients."""
    if len(params) != 6 or params[-2].shape[-2] != 1:
        return f"it needs an inner net of 2 hidden layers and 1 output, got {len(params) // 2 - 1} hidden layers"
    widths = [params[0].shape[-2], params[2].shape[-2]]
    if any(width % SIGN_BITS for width in widths):
        return f"it needs hidden widths that are multiples of {SIGN_BITS}, got {widths}"
    return None


def mismatch(z: torch.Tensor, params: Sequence[torch.Tensor], bf16: bool = False) -> str | None:
    """Why the op cannot evaluate the inner net ``params`` (W1, b1, W2, b2, w3, b3, or cell types' stacked along a
    leading dim) on ``z`` (with ``bf16`` products), or None."""
    if (reason := shape_mismatch(params)) is not None:
        return reason
    kind = backend(z.device)
    if bf16 and kind != "native":
        return "its bf16 products are the native CPU kernel's (on CUDA, bf16-mixed precision gives Triton bf16 inputs)"
    if params[0].dim() == 3 and kind != "native":
        return "cell types in one call are the native CPU kernel's"
    if kind == "native":
        return native.inner_kernel_mismatch(z, params)
    if kind is None:
        return f"it has no kernel for {z.device.type} tensors"
    if (error := triton_import_error()) is not None:
        return f"its CUDA kernels need Triton: {error}"
    if any(t.device != z.device for t in params):
        return f"inputs on {z.device} but weights on {params[0].device}"
    if z.dtype not in TRITON_DTYPES or any(t.dtype not in TRITON_DTYPES for t in params):
        return f"it needs float32, bfloat16 or float16 inputs and weights, got {z.dtype} inputs"
    if z.numel() >= MAX_TRITON_VALUES:
        return f"its Triton kernels index inputs with int32: {z.numel()} input values are too many (split the batch)"
    return None


def check_arguments(z: torch.Tensor, params: Sequence[torch.Tensor], bf16: bool = False) -> None:
    """Raise where the op cannot evaluate ``params`` on ``z`` (with ``bf16`` products): every call, whichever
    backend, checks this first."""
    if (reason := mismatch(z, params, bf16)) is not None:
        raise ValueError(f"lit_dendrite::inner_net cannot run: {reason}")


def op_dtype(z: torch.Tensor) -> torch.dtype:
    """The dtype in which :func:`fused_inner_net` hands ``z`` to the op: autocast's on CUDA for float32 inputs."""
    if z.is_cuda and torch.is_autocast_enabled("cuda") and z.dtype == torch.float32:
        return torch.get_autocast_dtype("cuda")
    return z.dtype


def tf32_products(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the Triton kernels multiply ``dtype`` inputs on ``device`` in tf32: float32, where torch allows it for
    matmuls (``torch.backends.cuda.matmul.allow_tf32``) and the GPU has it (compute capability 8.0 or newer)."""
    if dtype != torch.float32 or not torch.backends.cuda.matmul.allow_tf32:
        return False
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0)


@torch.compiler.assume_constant_result
def triton_installed() -> bool:
    """Whether Triton is installed and imports (torch.compile takes the answer as a constant)."""
    return triton_import_error() is None


@functools.cache
def triton_import_error() -> str | None:
    """Why ``import triton`` fails here (not installed, or broken), or None; asked once per process."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    try:
        import triton  # noqa: F401
    except Exception as error:  # a broken install raises anything: it is as good as none
        return f"Triton does not import ({type(error).__name__}: {error})"
    return None


def triton_kernels():
    """:mod:`lit_dendrite.nn.inner_triton`, imported on first use (Triton reads ``TRITON_INTERPRET`` on import)."""
    from lit_dendrite.nn import inner_triton

    return inner_triton


@torch.library.custom_op("lit_dendrite::inner_net", mutates_args=())
def inner_net(
    z: Tensor,
    normalized_ndim: int,
    eps: float,
    keep_signs: bool,
    bf16: bool,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    w3: Tensor,
    b3: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out, signs, mean, rstd): see the module's docstring."""
    params = [t.contiguous() for t in (w1, b1, w2, b2, w3, b3)]
    z = z.contiguous()
    check_arguments(z, params, bf16)
    if backend(z.device) == "triton":
        return triton_kernels().inner_forward(z, normalized_ndim, eps, params, keep_signs)
    arity, h2 = w1.shape[-1], w2.shape[-2]
    rows, statistics = _normalized_rows(z.float(), normalized_ndim, eps, arity)
    types = _TypeOrder(z.shape[-1] // arity, w1) if w1.dim() == 3 else None
    if types is not None:
        rows = types.grouped(rows)
    out, signs = native.inner_forward(
        rows, params, keep_signs=keep_signs, bf16=bf16, type_rows=types and types.rows(len(rows))
    )
    if types is not None:
        out = types.ungrouped(out)
    out = out.to(z.dtype)
    if signs is None:
        signs = torch.empty(0, h2 // SIGN_BITS, dtype=torch.int16)
    mean, rstd = statistics or (rows.new_empty(0), rows.new_empty(0))
    return out.view(*z.shape[:-1], z.shape[-1] // arity), signs, mean, rstd


@inner_net.register_fake
def _(z, normalized_ndim, eps, keep_signs, bf16, w1, b1, w2, b2, w3, b3):
    if (reason := shape_mismatch((w1, b1, w2, b2, w3, b3))) is not None:
        raise ValueError(f"lit_dendrite::inner_net cannot run: {reason}")
    arity, h2 = w1.shape[-1], w2.shape[-2]
    out = z.new_empty(*z.shape[:-1], z.shape[-1] // arity)
    signs = z.new_empty(z.numel() // arity if keep_signs else 0, h2 // SIGN_BITS, dtype=torch.int16)
    stat_shape = (*z.shape[: z.dim() - normalized_ndim], *[1] * normalized_ndim) if normalized_ndim else (0,)
    return out, signs, z.new_empty(stat_shape, dtype=torch.float32), z.new_empty(stat_shape, dtype=torch.float32)


@torch.library.custom_op("lit_dendrite::inner_net_backward", mutates_args=())
def inner_net_backward(
    grad_out: Tensor,
    z: Tensor,
    mean: Tensor,
    rstd: Tensor,
    signs: Tensor,
    normalized_ndim: int,
    eps: float,
    input_grad: bool,
    param_grads: bool,
    bf16: bool,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    w3: Tensor,
    b3: Tensor,
) -> list[Tensor]:
    """``[grad_rows, dw1, db1, dw2, db2, dw3, db3]`` of :func:`inner_net` for the output gradient ``grad_out``:
    ``grad_rows`` (float32, ``z``'s shape) is the gradient of the LayerNorm's output, whose backward the autograd
    formula takes; the gradients not asked for (``input_grad``, ``param_grads``) are empty. Empty ``signs`` are
    recomputed."""
    params = [t.contiguous() for t in (w1, b1, w2, b2, w3, b3)]
    z, grad_out, arity = z.contiguous(), grad_out.contiguous().view(-1), w1.shape[-1]
    check_arguments(z, params, bf16)
    if backend(z.device) == "triton":
        grad_rows, sums = triton_kernels().inner_backward(
            grad_out, z, mean, rstd, signs, normalized_ndim, params, input_grad, param_grads
        )
    else:
        # The recomputed LayerNorm output is a fresh tensor: its gradient may replace it (saves a buffer).
        rows, _ = _normalized_rows(z.float(), normalized_ndim, eps, arity)
        grad_out = grad_out.float()
        types = _TypeOrder(z.shape[-1] // arity, w1) if w1.dim() == 3 else None
        if types is not None:  # grouped copies, so the rows' gradient may replace them
            rows, grad_out = types.grouped(rows), types.grouped(grad_out)
        signs = signs if signs.numel() else None
        overwrite = bool(normalized_ndim) or types is not None
        grad_rows, sums = native.inner_backward(
            rows, grad_out, params, input_grad, param_grads, signs, overwrite, bf16, types and types.rows(len(rows))
        )
        del rows
        if types is not None and grad_rows is not None:
            grad_rows = types.ungrouped(grad_rows)
    grad_rows = grad_rows.view(z.shape) if input_grad else z.new_empty(0, dtype=torch.float32)
    if sums is None:
        return [grad_rows, *(t.new_empty(0) for t in params)]
    product, gated_sum, first_weight_t, first_bias, grad_sum = sums
    out_weight = params[4][..., 0, :].float()
    hidden_grads = output_layer_grads(params[2].float(), params[3].float(), out_weight, product, gated_sum)
    grads = [first_weight_t.transpose(-1, -2), first_bias, *hidden_grads, grad_sum]
    # Copies: the sums are views of one buffer, and an op's outputs may not alias each other.
    return [
        grad_rows,
        *(g.to(p.dtype, memory_format=torch.contiguous_format, copy=True) for g, p in zip(grads, params)),
    ]


@inner_net_backward.register_fake
def _(grad_out, z, mean, rstd, signs, normalized_ndim, eps, input_grad, param_grads, bf16, w1, b1, w2, b2, w3, b3):
    grad_rows = torch.empty_like(z, dtype=torch.float32) if input_grad else z.new_empty(0, dtype=torch.float32)
    params = (w1, b1, w2, b2, w3, b3)
    return [grad_rows, *(torch.empty_like(p) if param_grads else p.new_empty(0) for p in params)]


def _setup_context(ctx, inputs, output) -> None:
    z, normalized_ndim, eps, _, bf16, *params = inputs
    _, signs, mean, rstd = output
    ctx.save_for_backward(z, mean, rstd, *params)
    ctx.normalized_ndim, ctx.eps, ctx.bf16 = normalized_ndim, eps, bf16
    ctx.signs = signs  # not saved with the inputs: backward frees it as soon as it is used
    ctx.set_materialize_grads(False)  # no zero gradients for the signs and statistics


def _backward(ctx, grad_out, *_unused_grads):
    z, mean, rstd, *params = ctx.saved_tensors
    need_z, need_params = ctx.needs_input_grad[0], any(ctx.needs_input_grad[5:])
    # The signs are used once, then freed before the LayerNorm's backward; a second backward through a retained
    # graph recomputes them (empty signs).
    signs, ctx.signs = ctx.signs, ctx.signs.new_empty(0, ctx.signs.shape[1])
    grad_rows, *grads = inner_net_backward(
        grad_out, z, mean, rstd, signs, ctx.normalized_ndim, ctx.eps, need_z, need_params, ctx.bf16, *params
    )
    del signs
    grad_z = None
    if need_z and ctx.normalized_ndim:
        shape = z.shape[z.dim() - ctx.normalized_ndim :]
        # In float32, as autocast runs the LayerNorm (a bf16 z is its cast input), then in z's dtype.
        grad_z = torch.ops.aten.native_layer_norm_backward(
            grad_rows, z.float(), shape, mean, rstd, None, None, [True, False, False]
        )[0].to(z.dtype)
    elif need_z:
        grad_z = grad_rows.to(z.dtype)
    return (grad_z, None, None, None, None, *(g if need_params else None for g in grads))


inner_net.register_autograd(_backward, setup_context=_setup_context)


def fused_inner_net(
    z: torch.Tensor, normalized_ndim: int, eps: float, params: Sequence[torch.Tensor], bf16: bool = False
) -> torch.Tensor:
    """The op's values (with ``bf16`` products), keeping the signs for backward only when a gradient will be needed.
    Under CUDA autocast, float32 inputs are cast to autocast's dtype first, as autocast casts a matmul's inputs."""
    z = z.to(op_dtype(z))
    keep_signs = torch.is_grad_enabled() and any(t.requires_grad for t in (z, *params))
    return inner_net(z, normalized_ndim, eps, keep_signs, bf16, *params)[0]


def output_layer_grads(
    weight: torch.Tensor, bias: torch.Tensor, out_weight: torch.Tensor, product: torch.Tensor, gated_sum: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the last hidden layer (``weight``, ``bias``) and of the output weights from ``product`` = G^T a
    and ``gated_sum`` = colsum(G), G the output gradient gated by the last hidden layer's ReLU (see ``_LeanInner``);
    any leading dims (cell types) are kept."""
    grad_out_weight = ((weight * product).sum(-1) + bias * gated_sum).unsqueeze(-2)
    return out_weight.unsqueeze(-1) * product, out_weight * gated_sum, grad_out_weight


def cell_type_blocks(units: int, types: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each type's units in a layer of ``units`` units: unit u has type ``floor(u * types /
    units)``, so type k starts at ``ceil(k * units / types)``."""
    if units < 1 or types < 1:
        raise ConfigError(f"cell types need units >= 1 and types >= 1, got units={units}, types={types}")
    starts = [-(-k * units // types) for k in range(types + 1)]
    return list(zip(starts[:-1], starts[1:]))


class _TypeOrder:
    """Rows of a layer's units (unit fastest) regrouped by cell type (:func:`cell_type_blocks`) for the kernel's one
    call over all types, and back."""

    def __init__(self, units: int, stacked_w1: torch.Tensor) -> None:
        self.units = units
        self.blocks = cell_type_blocks(units, len(stacked_w1))

    def rows(self, n: int) -> list[int]:
        """How many of ``n`` rows each type has."""
        return [n // self.units * (stop - start) for start, stop in self.blocks]

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        per_unit = values.view(-1, self.units, *values.shape[1:])
        return torch.cat([per_unit[:, start:stop].reshape(-1, *values.shape[1:]) for start, stop in self.blocks])

    def ungrouped(self, values: torch.Tensor) -> torch.Tensor:
        per_unit = values.new_empty(len(values) // self.units, self.units, *values.shape[1:])
        for (start, stop), part in zip(self.blocks, values.split(self.rows(len(values)))):
            per_unit[:, start:stop] = part.view(len(per_unit), stop - start, *values.shape[1:])
        return per_unit.view(values.shape)


def _normalized_rows(
    z: torch.Tensor, normalized_ndim: int, eps: float, arity: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``z`` as rows of ``arity`` after LayerNorm over its last ``normalized_ndim`` dims (none for 0), and the
    LayerNorm's mean and rstd: the same values in forward and in backward's recomputation."""
    if not normalized_ndim:
        return z.view(-1, arity), []
    normalized, mean, rstd = torch.native_layer_norm(z, z.shape[z.dim() - normalized_ndim :], None, None, eps)
    return normalized.view(-1, arity), [mean, rstd]
