"""The exact inner net (2 hidden layers) as fused Triton kernels: the CUDA backend of :mod:`lit_dendrite.nn.inner_op`.

A program loads a block of rows once and keeps both hidden layers in registers: the first layer (``arity`` inputs) as
outer products, the second as one ``tl.dot`` (tensor cores: tf32 when ``torch.backends.cuda.matmul.allow_tf32``
allows it, else full fp32; bf16 or fp16 products with fp32 accumulation for bf16 or fp16 inputs), the output as a
row sum. With a LayerNorm (the dendritic layers), rows are normalised as they are loaded, from per-sample statistics
taken first, so no normalised copy of the layer exists. Forward keeps the signs of the last hidden layer (1 bit per
unit, the same int16 words as the native CPU kernel); backward recomputes the first hidden layer, takes the second's
signs (or recomputes it) and runs the two products of the gradient on the block. Each of a fixed number of programs
walks its share of the blocks and sums its weight gradients in registers; the per-program sums are added on the host
in float64, in a fixed order: the gradients do not depend on scheduling.

The frozen tables get the same treatment in inference (:func:`table_lookup`): LayerNorm on load, bilinear lookup,
NaN for pairs outside the box, which the caller evaluates exactly.

Hidden widths are padded to the next power of two inside the kernels (zero weights), so any multiple of 16 runs.
Block sizes and warp counts are untuned: no GPU was available when they were written. Under ``TRITON_INTERPRET=1``
(set before Triton is imported) the same kernels run on CPU tensors in Triton's interpreter, which the tests use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from lit_dendrite.nn.inner_op import tf32_products
from lit_dendrite.nn.native import SIGN_BITS

FORWARD_BLOCK_ROWS = 64
BACKWARD_BLOCK_ROWS = 64
TABLE_BLOCK_PAIRS = 512
# Backward programs per streaming multiprocessor: each keeps a (h2, h1) gradient sum in registers while it walks
# its blocks. Under the interpreter (CPU tensors) a few programs, so that tests cover the walk and the final sum.
PROGRAMS_PER_SM = 2
INTERPRETER_PROGRAMS = 3
LOW_PRECISION = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _first_layer(z_ptr, mean_ptr, rstd_ptr, samples, w1_ptr, b1_ptr, rows, live, ARITY: tl.constexpr,
                 H1: tl.constexpr, H1P: tl.constexpr, BLOCK: tl.constexpr, NORMALIZE: tl.constexpr):  # fmt: skip
    """Pre-activations (BLOCK, H1P) of the first hidden layer for ``rows`` of samples ``samples`` (LayerNorm applied
    on load)."""
    units = tl.arange(0, H1P)
    unit_live = units < H1
    if NORMALIZE:
        mean = tl.load(mean_ptr + samples, mask=live, other=0.0)
        rstd = tl.load(rstd_ptr + samples, mask=live, other=0.0)
    pre = (
        tl.zeros((BLOCK, H1P), tl.float32) + tl.load(b1_ptr + units, mask=unit_live, other=0.0).to(tl.float32)[None, :]
    )
    for a in tl.static_range(ARITY):
        x = tl.load(z_ptr + rows * ARITY + a, mask=live, other=0.0).to(tl.float32)
        if NORMALIZE:
            x = (x - mean) * rstd
        w = tl.load(w1_ptr + units * ARITY + a, mask=unit_live, other=0.0).to(tl.float32)
        pre += x[:, None] * w[None, :]
    return pre


@triton.jit
def _relu(x):
    """``torch.relu``: NaN stays NaN."""
    return tl.where(x < 0, 0.0, x)


@triton.jit
def _matrix(ptr, H_OUT: tl.constexpr, H_IN: tl.constexpr, HOP: tl.constexpr, HIP: tl.constexpr,
            TRANSPOSE: tl.constexpr):  # fmt: skip
    """A row-major (H_OUT, H_IN) matrix padded with zeros to (HOP, HIP), or its transpose (HIP, HOP)."""
    if TRANSPOSE:
        i = tl.arange(0, HIP)[:, None]
        o = tl.arange(0, HOP)[None, :]
    else:
        o = tl.arange(0, HOP)[:, None]
        i = tl.arange(0, HIP)[None, :]
    return tl.load(ptr + o * H_IN + i, mask=(o < H_OUT) & (i < H_IN), other=0.0).to(tl.float32)


@triton.jit
def _vector(ptr, H: tl.constexpr, HP: tl.constexpr):
    units = tl.arange(0, HP)
    return tl.load(ptr + units, mask=units < H, other=0.0).to(tl.float32)


@triton.jit
def _product(a, b, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, ROUND_ONLY: tl.constexpr):
    """``a @ b`` with fp32 accumulation; operands in DOT_DTYPE (fp32 products use PRECISION: tf32 or ieee). With
    ROUND_ONLY the operands are rounded to DOT_DTYPE and multiplied in fp32: the same numbers, for the interpreter,
    whose bf16 ``tl.dot`` multiplies the raw bits (Triton 3.8)."""
    if tl.float32 == DOT_DTYPE:
        return tl.dot(a, b, input_precision=PRECISION)
    if ROUND_ONLY:
        rounded_a = a.to(DOT_DTYPE, fp_downcast_rounding="rtne").to(tl.float32)
        rounded_b = b.to(DOT_DTYPE, fp_downcast_rounding="rtne").to(tl.float32)
        return tl.dot(rounded_a, rounded_b, input_precision="ieee")
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), out_dtype=tl.float32)


@triton.jit
def _sample_rows(rows, live, rows_per_sample):
    return tl.where(live, rows // rows_per_sample, 0)


@triton.jit
def sign_offsets(rows, live, WORDS_PER_ROW: tl.constexpr, WORDS: tl.constexpr):
    """Offsets (BLOCK, WORDS) of the sign words of ``rows`` in the (n_rows, WORDS_PER_ROW) int16 signs, and the mask
    of those stored (live rows, words that exist). In int64: n_rows * WORDS_PER_ROW passes 2^31 from about 2^30 input
    values (arity 2, width 64), while every other offset stays below the input's size, which the op keeps < 2^31."""
    word_index = tl.arange(0, WORDS)[None, :]
    offsets = rows.to(tl.int64)[:, None] * WORDS_PER_ROW + word_index
    return offsets, live[:, None] & (word_index < WORDS_PER_ROW)


@triton.jit
def inner_forward_kernel(z_ptr, mean_ptr, rstd_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, out_ptr, signs_ptr,
                         n_rows, rows_per_sample, ARITY: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr,
                         H1P: tl.constexpr, H2P: tl.constexpr, BLOCK: tl.constexpr, NORMALIZE: tl.constexpr,
                         KEEP_SIGNS: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                         ROUND_ONLY: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n_rows
    samples = _sample_rows(rows, live, rows_per_sample)
    hidden = _relu(_first_layer(z_ptr, mean_ptr, rstd_ptr, samples, w1_ptr, b1_ptr, rows, live, ARITY, H1, H1P,
                                BLOCK, NORMALIZE))  # fmt: skip
    w2t = _matrix(w2_ptr, H2, H1, H2P, H1P, True)
    pre = _product(hidden, w2t, DOT_DTYPE, PRECISION, ROUND_ONLY) + _vector(b2_ptr, H2, H2P)[None, :]
    out = tl.sum(_relu(pre) * _vector(w3_ptr, H2, H2P)[None, :], axis=1) + tl.load(b3_ptr).to(tl.float32)
    tl.store(out_ptr + rows, out, mask=live)
    if KEEP_SIGNS:
        WORDS: tl.constexpr = H2P // 16
        bits = tl.reshape(tl.where(pre <= 0, 0, 1), (BLOCK, WORDS, 16))  # NaN counts as positive
        words = tl.sum(bits << tl.arange(0, 16)[None, None, :], axis=2)
        offsets, stored = sign_offsets(rows, live, H2 // 16, WORDS)
        tl.store(signs_ptr + offsets, words.to(tl.int16), mask=stored)


@triton.jit
def inner_backward_kernel(z_ptr, mean_ptr, rstd_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w2out_ptr, grad_out_ptr,
                          signs_ptr, grad_rows_ptr, product_ptr, gated_sum_ptr, first_weight_ptr, first_bias_ptr,
                          grad_sum_ptr, n_rows, rows_per_sample, ARITY: tl.constexpr, ARITY_P: tl.constexpr,
                          H1: tl.constexpr, H2: tl.constexpr, H1P: tl.constexpr, H2P: tl.constexpr,
                          BLOCK: tl.constexpr, NORMALIZE: tl.constexpr, HAVE_SIGNS: tl.constexpr,
                          INPUT_GRAD: tl.constexpr, PARAM_SUMS: tl.constexpr, DOT_DTYPE: tl.constexpr,
                          PRECISION: tl.constexpr, ROUND_ONLY: tl.constexpr):  # fmt: skip
    """Per program: the rows' gradient of its blocks, and sums over them of ``P = G^T relu(h1)``, ``colsum(G)``,
    ``dW1^T``, ``db1`` and ``sum(grad_out)`` with ``G = grad_out * [h2 > 0]`` (see ``native.inner_backward``)."""
    program, programs = tl.program_id(0), tl.num_programs(0)
    w1_units = tl.arange(0, H1P)
    w2out = _matrix(w2out_ptr, H2, H1, H2P, H1P, False)
    product = tl.zeros((H2P, H1P), tl.float32)
    gated_sum = tl.zeros((H2P,), tl.float32)
    first_weight = tl.zeros((ARITY_P, H1P), tl.float32)
    first_bias = tl.zeros((H1P,), tl.float32)
    grad_sum = tl.zeros((BLOCK,), tl.float32)
    arity_index = tl.arange(0, ARITY_P)[:, None]
    for block in range(program, tl.cdiv(n_rows, BLOCK), programs):
        rows = block * BLOCK + tl.arange(0, BLOCK)
        live = rows < n_rows
        samples = _sample_rows(rows, live, rows_per_sample)
        pre1 = _first_layer(z_ptr, mean_ptr, rstd_ptr, samples, w1_ptr, b1_ptr, rows, live, ARITY, H1, H1P,
                            BLOCK, NORMALIZE)  # fmt: skip
        hidden = _relu(pre1)
        if HAVE_SIGNS:
            WORDS: tl.constexpr = H2P // 16
            offsets, stored = sign_offsets(rows, live, H2 // 16, WORDS)
            words = tl.load(signs_ptr + offsets, mask=stored, other=0).to(tl.int32)
            bits = (words[:, :, None] >> tl.arange(0, 16)[None, None, :]) & 1
            blocked = tl.reshape(bits, (BLOCK, H2P)) == 0
        else:
            w2t = _matrix(w2_ptr, H2, H1, H2P, H1P, True)
            blocked = (_product(hidden, w2t, DOT_DTYPE, PRECISION, ROUND_ONLY) + _vector(b2_ptr, H2, H2P)[None, :]) <= 0
        grad_out = tl.load(grad_out_ptr + rows, mask=live, other=0.0).to(tl.float32)
        # ReLU gradients as torch.relu's: blocked where the pre-activation is <= 0 (a NaN lets the gradient through).
        gated = tl.where(blocked, 0.0, grad_out[:, None])  # G, (BLOCK, H2P)
        grad_pre1 = tl.where(pre1 <= 0, 0.0, _product(gated, w2out, DOT_DTYPE, PRECISION, ROUND_ONLY))  # (BLOCK, H1P)
        if PARAM_SUMS:
            product += _product(tl.trans(gated), hidden, DOT_DTYPE, PRECISION, ROUND_ONLY)
            gated_sum += tl.sum(gated, axis=0)
            first_bias += tl.sum(grad_pre1, axis=0)
            grad_sum += grad_out
        for a in tl.static_range(ARITY):
            if PARAM_SUMS:
                x = tl.load(z_ptr + rows * ARITY + a, mask=live, other=0.0).to(tl.float32)
                if NORMALIZE:
                    x = (x - tl.load(mean_ptr + samples, mask=live, other=0.0)) * tl.load(
                        rstd_ptr + samples, mask=live, other=0.0
                    )
                first_weight += tl.where(arity_index == a, tl.sum(grad_pre1 * x[:, None], axis=0)[None, :], 0.0)
            if INPUT_GRAD:
                w = tl.load(w1_ptr + w1_units * ARITY + a, mask=w1_units < H1, other=0.0).to(tl.float32)
                tl.store(grad_rows_ptr + rows * ARITY + a, tl.sum(grad_pre1 * w[None, :], axis=1), mask=live)
    if PARAM_SUMS:
        o = tl.arange(0, H2P)
        i = tl.arange(0, H1P)
        tl.store(product_ptr + program * H2P * H1P + o[:, None] * H1P + i[None, :], product)
        tl.store(gated_sum_ptr + program * H2P + o, gated_sum)
        tl.store(first_weight_ptr + program * ARITY_P * H1P + arity_index * H1P + i[None, :], first_weight)
        tl.store(first_bias_ptr + program * H1P + i, first_bias)
        tl.store(grad_sum_ptr + program, tl.sum(grad_sum))


def _shape(params: Sequence[torch.Tensor]) -> tuple[int, int, int, int, int]:
    """(arity, h1, h2) and the padded widths (h1p, h2p)."""
    arity, h1, h2 = params[0].shape[1], params[0].shape[0], params[2].shape[0]
    return arity, h1, h2, triton.next_power_of_2(h1), triton.next_power_of_2(h2)


def _dot_options(z: torch.Tensor) -> dict[str, object]:
    precision = "tf32" if tf32_products(z.dtype, z.device) else "ieee"
    dot_dtype = LOW_PRECISION.get(z.dtype, tl.float32)
    return {"DOT_DTYPE": dot_dtype, "PRECISION": precision, "ROUND_ONLY": dot_dtype == tl.bfloat16 and not z.is_cuda}


def _statistics(z: torch.Tensor, normalized_ndim: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The LayerNorm's mean and rstd per sample, shaped as ``torch.native_layer_norm`` returns them (float32);
    empty without a LayerNorm."""
    if not normalized_ndim:
        return z.new_empty(0, dtype=torch.float32), z.new_empty(0, dtype=torch.float32)
    var, mean = torch.var_mean(z.float(), dim=tuple(range(z.dim() - normalized_ndim, z.dim())), correction=0,
                               keepdim=True)  # fmt: skip
    return mean, torch.rsqrt(var + eps)


def _rows_per_sample(z: torch.Tensor, normalized_ndim: int, arity: int) -> int:
    return max(1, z.shape[z.dim() - normalized_ndim :].numel() // arity) if normalized_ndim else 1


def _present(*tensors: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
    """``tensors``, with ``z`` standing in for the empty ones: a kernel never reads them (its flags say so), but an
    empty tensor may have no address to pass."""
    return [t if t.numel() else z for t in tensors]


def _device(z: torch.Tensor):
    return torch.cuda.device(z.device) if z.is_cuda else torch.device(z.device)


def inner_forward(
    z: torch.Tensor, normalized_ndim: int, eps: float, params: Sequence[torch.Tensor], keep_signs: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inner net on each group of ``arity`` adjacent features of contiguous ``z``'s last dim, after a LayerNorm
    over its last ``normalized_ndim`` dims (none for 0): (out, signs, mean, rstd) as :mod:`~lit_dendrite.nn.inner_op`
    defines them; ``out`` in ``z``'s dtype."""
    arity, h1, h2, h1p, h2p = _shape(params)
    n_rows = z.numel() // arity
    mean, rstd = _statistics(z, normalized_ndim, eps)
    out = z.new_empty(n_rows)
    signs = torch.empty((n_rows if keep_signs else 0, h2 // SIGN_BITS), dtype=torch.int16, device=z.device)
    w1, b1, w2, b2, w3, b3 = params
    grid = (triton.cdiv(n_rows, FORWARD_BLOCK_ROWS),)
    if n_rows:
        with _device(z):
            inner_forward_kernel[grid](
                z, *_present(mean, rstd, z=z), w1, b1, w2, b2, w3, b3, out, *_present(signs, z=out), n_rows,
                _rows_per_sample(z, normalized_ndim, arity),
                ARITY=arity, H1=h1, H2=h2, H1P=h1p, H2P=h2p, BLOCK=FORWARD_BLOCK_ROWS, NORMALIZE=bool(normalized_ndim),
                KEEP_SIGNS=keep_signs, **_dot_options(z),
            )  # fmt: skip
    return out.view(*z.shape[:-1], z.shape[-1] // arity), signs, mean, rstd


def inner_backward(
    grad_out: torch.Tensor,
    z: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    signs: torch.Tensor,
    normalized_ndim: int,
    params: Sequence[torch.Tensor],
    input_grad: bool,
    param_sums: bool,
) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
    """Backward of :func:`inner_forward`: the float32 gradient of the normalised rows (n, arity) with ``input_grad``,
    and with ``param_sums`` ``[P, s, dW1^T, db1, sum(grad_out)]`` as ``native.inner_backward`` returns them. Empty
    ``signs`` are recomputed."""
    arity, h1, h2, h1p, h2p = _shape(params)
    n_rows = z.numel() // arity
    w1, b1, w2, b2, w3, _ = params
    w2out = (w3[0].float().unsqueeze(1) * w2.float()).contiguous()
    blocks = triton.cdiv(n_rows, BACKWARD_BLOCK_ROWS)
    if z.is_cuda:
        programs = torch.cuda.get_device_properties(z.device).multi_processor_count * PROGRAMS_PER_SM
    else:
        programs = INTERPRETER_PROGRAMS
    programs = max(1, min(blocks, programs))
    arity_p = triton.next_power_of_2(arity)
    grad_rows = torch.empty(n_rows, arity, dtype=torch.float32, device=z.device) if input_grad else None
    parts = [(h2p, h1p), (h2p,), (arity_p, h1p), (h1p,), ()]
    sums = [torch.zeros(programs, *shape, dtype=torch.float32, device=z.device) for shape in parts]
    if n_rows:
        with _device(z):
            inner_backward_kernel[(programs,)](
                z, *_present(mean, rstd, z=z), w1, b1, w2, b2, w2out, grad_out, *_present(signs, z=z),
                grad_rows if input_grad else z, *sums, n_rows,
                _rows_per_sample(z, normalized_ndim, arity), ARITY=arity, ARITY_P=arity_p, H1=h1, H2=h2, H1P=h1p,
                H2P=h2p, BLOCK=BACKWARD_BLOCK_ROWS, NORMALIZE=bool(normalized_ndim), HAVE_SIGNS=bool(signs.numel()),
                INPUT_GRAD=input_grad, PARAM_SUMS=param_sums, num_warps=8, **_dot_options(z),
            )  # fmt: skip
    if not param_sums:
        return grad_rows, None
    product, gated_sum, first_weight_t, first_bias, grad_sum = (part.double().sum(0).float() for part in sums)
    return grad_rows, [product[:h2, :h1], gated_sum[:h2], first_weight_t[:arity, :h1], first_bias[:h1],
                       grad_sum.reshape(1)]  # fmt: skip


@triton.jit
def table_lookup_kernel(z_ptr, mean_ptr, rstd_ptr, cells_ptr, scale_ptr, offset_ptr, out_ptr, n_pairs,
                        pairs_per_sample, GRID: tl.constexpr, BLOCK: tl.constexpr,
                        NORMALIZE: tl.constexpr):  # fmt: skip
    """A frozen table on pairs: LayerNorm on load, grid coordinates, bilinear value of the cell (``table_kernel.c``'s
    form and clamping); NaN for a pair outside the box or with a NaN, which the caller evaluates exactly."""
    pairs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = pairs < n_pairs
    x0 = tl.load(z_ptr + 2 * pairs, mask=live, other=0.0).to(tl.float32)
    x1 = tl.load(z_ptr + 2 * pairs + 1, mask=live, other=0.0).to(tl.float32)
    if NORMALIZE:
        samples = _sample_rows(pairs, live, pairs_per_sample)
        mean = tl.load(mean_ptr + samples, mask=live, other=0.0)
        rstd = tl.load(rstd_ptr + samples, mask=live, other=0.0)
        x0 = (x0 - mean) * rstd
        x1 = (x1 - mean) * rstd
    u = x0 * tl.load(scale_ptr) + tl.load(offset_ptr)
    v = x1 * tl.load(scale_ptr + 1) + tl.load(offset_ptr + 1)
    top = GRID - 1.0
    inside = (u >= 0) & (u <= top) & (v >= 0) & (v <= top)
    u = tl.minimum(tl.where(u > 0, u, 0.0), top)  # NaN -> 0: every pair reads a valid cell
    v = tl.minimum(tl.where(v > 0, v, 0.0), top)
    i = tl.minimum(u.to(tl.int32), GRID - 2)
    j = tl.minimum(v.to(tl.int32), GRID - 2)
    fu = u - i.to(tl.float32)
    fv = v - j.to(tl.float32)
    cell = cells_ptr + 4 * (j * (GRID - 1) + i)
    c0 = tl.load(cell, mask=live, other=0.0)
    c1 = tl.load(cell + 1, mask=live, other=0.0)
    c2 = tl.load(cell + 2, mask=live, other=0.0)
    c3 = tl.load(cell + 3, mask=live, other=0.0)
    value = c0 + fu * c1 + fv * (c2 + fu * c3)
    tl.store(out_ptr + pairs, tl.where(inside, value, float("nan")), mask=live)


def table_lookup(
    z: torch.Tensor, normalized_ndim: int, cells: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``native.normalized_table_lookup`` without the pool, on the device of ``z`` (float32, bf16 or fp16; values in
    float32): (values, mean, rstd, outside), mean and rstd one entry per sample, outside the flat indices of the NaN
    values (pairs outside the box or with a NaN)."""
    n_pairs = z.numel() // 2
    mean, rstd = _statistics(z, normalized_ndim, eps)
    values = torch.empty(*z.shape[:-1], z.shape[-1] // 2, dtype=torch.float32, device=z.device)
    if n_pairs:
        with _device(z):
            table_lookup_kernel[(triton.cdiv(n_pairs, TABLE_BLOCK_PAIRS),)](
                z, *_present(mean, rstd, z=z), cells, scale, offset, values, n_pairs,
                _rows_per_sample(z, normalized_ndim, 2), GRID=cells.shape[0] + 1, BLOCK=TABLE_BLOCK_PAIRS,
                NORMALIZE=bool(normalized_ndim),
            )  # fmt: skip
    outside = values.view(-1).isnan().nonzero().squeeze(1)
    return values, mean.view(-1), rstd.view(-1), outside
