"""The Triton backend of the fused inner net against a float64 reference: on CUDA where there is a device, and
everywhere under Triton's interpreter on CPU tensors.

Triton reads ``TRITON_INTERPRET`` when it is imported, and with it set the op sends CPU tensors through the Triton
kernels: set in the test process it would slow every later test down. So without it, this module runs itself in a
child process that sets it (``test_triton_kernels_under_the_interpreter``); in that child the kernel tests run on
CPU tensors, while in an ordinary process they run on CUDA (skipped without a device). The shapes are small: the
interpreter runs each program in numpy.
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lit_dendrite.nn import DendriticMLP, InnerNet, inner_op
from lit_dendrite.nn.neurons import LAYER_NORM_EPS, max_pool_maps
from lit_dendrite.nn.tabulated import InnerTable

INTERPRETED = inner_op.triton_interpreted()
if INTERPRETED:
    DEVICES = ["cpu"]
else:
    DEVICES = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


if INTERPRETED or (torch.cuda.is_available() and inner_op.triton_installed()):
    import triton
    import triton.language as tl

    from lit_dendrite.nn.inner_triton import sign_offsets

    @triton.jit
    def _sign_offsets_kernel(out_ptr, first_row, n_rows, WORDS_PER_ROW: tl.constexpr, WORDS: tl.constexpr):
        """The sign offsets of the rows ``first_row + 0..3``, -1 where none is stored."""
        rows = first_row + tl.arange(0, 4)
        offsets, stored = sign_offsets(rows, rows < n_rows, WORDS_PER_ROW, WORDS)
        index = tl.arange(0, 4)[:, None] * WORDS + tl.arange(0, WORDS)[None, :]
        tl.store(out_ptr + index, tl.where(stored, offsets, -1))


@pytest.mark.skipif(INTERPRETED, reason="this is the child process")
@pytest.mark.parametrize("selection", ["not slow", pytest.param("slow", marks=pytest.mark.slow)])
def test_triton_kernels_under_the_interpreter(selection):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-m", selection, "-rs"]
    child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-6000:] + child.stderr[-3000:]
    assert " passed" in child.stdout and "needs CUDA" not in child.stdout, child.stdout[-2000:]


def _random_inner(arity, hidden, seed=0):
    torch.manual_seed(seed)
    inner = InnerNet(arity=arity, hidden=hidden)
    for linear in inner.linears:  # nonzero biases, so that every bias gradient is tested
        torch.nn.init.uniform_(linear.bias, -0.5, 0.5)
    return inner


def _reference(z, normalized_ndim, params):
    """The plain evaluation in whatever dtype its arguments have."""
    w1, b1, w2, b2, w3, b3 = params
    if normalized_ndim:
        z = F.layer_norm(z, z.shape[z.dim() - normalized_ndim :], eps=LAYER_NORM_EPS)
    rows = z.unflatten(-1, (-1, w1.shape[1]))
    hidden = torch.relu(rows @ w1.t() + b1)
    hidden = torch.relu(hidden @ w2.t() + b2)
    return (hidden @ w3.t() + b3).squeeze(-1)


def _values_and_grads(z, normalized_ndim, params, upstream, fused, retain=False):
    z = z.detach().requires_grad_(True)
    params = [p.detach().requires_grad_(True) for p in params]
    if fused:
        out = inner_op.fused_inner_net(z, normalized_ndim, LAYER_NORM_EPS, params)
    else:
        out = _reference(z, normalized_ndim, params)
    grads = torch.autograd.grad(out, [z, *params], upstream.to(out.dtype), retain_graph=retain)
    if retain:  # a second backward through the retained graph recomputes the signs the first one freed
        again = torch.autograd.grad(out, [z, *params], upstream.to(out.dtype))
        for a, b in zip(again, grads):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))
    return out.detach(), grads


def _assert_matches_float64(z, normalized_ndim, params, rtol, retain=False):
    upstream = torch.linspace(-0.5, 1, z.numel() // params[0].shape[1]).view(*z.shape[:-1], -1).to(z.device)
    out, grads = _values_and_grads(z, normalized_ndim, params, upstream, fused=True, retain=retain)
    exact, exact_grads = _values_and_grads(
        z.double(), normalized_ndim, [p.double() for p in params], upstream.double(), fused=False
    )
    assert out.dtype == z.dtype and grads[0].dtype == z.dtype
    torch.testing.assert_close(out.double(), exact, rtol=rtol, atol=rtol * float(exact.abs().max()))
    for got, want, param in zip(grads, exact_grads, [z, *params]):
        assert got.shape == param.shape and got.dtype == param.dtype
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * float(want.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("arity", "hidden", "shape", "normalized_ndim"),
    [
        (2, (64, 64), (3, 5, 14), 0),  # 105 rows: one full block and a masked tail
        (2, (64, 64), (2, 5, 50), 2),  # 250 rows: 4 blocks over 3 backward programs, LayerNorm over 2 dims
        (1, (16, 32), (3, 5, 7), 1),
        (3, (48, 80), (2, 7, 21), 2),  # widths padded to 64 and 128 inside the kernels
    ],
)
def test_forward_and_backward_match_float64(device, arity, hidden, shape, normalized_ndim):
    params = [p.detach().to(device) for p in _random_inner(arity, hidden).parameters()]
    z = (torch.randn(shape) * 2 + 0.5).to(device)
    _assert_matches_float64(z, normalized_ndim, params, rtol=2e-5, retain=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_as_accurate_as_autocast(device, dtype):
    """bf16/fp16 inputs (as autocast gives them) with float32 weights: products in half precision, sums in float32,
    values and input gradients in the input's dtype, weight gradients in float32. Measured against float64, the
    errors stay within a small factor of those of the plain layers under autocast (the gradient of a LayerNorm's input
    loses most digits to cancellation, there as here)."""
    params = [p.detach().to(device) for p in _random_inner(2, (64, 64), seed=1).parameters()]
    z = torch.randn(2, 5, 40).to(device, dtype)
    upstream = torch.linspace(-0.5, 1, 200, device=device).view(2, 5, 20)
    fused = _values_and_grads(z, 2, params, upstream, fused=True)
    exact = _values_and_grads(z.double(), 2, [p.double() for p in params], upstream.double(), fused=False)
    with torch.autocast(device, dtype=dtype):
        autocast = _values_and_grads(z, 2, params, upstream, fused=False)
    assert fused[0].dtype == dtype and fused[1][0].dtype == dtype
    assert [g.dtype for g in fused[1][1:]] == [p.dtype for p in params]
    for got, plain, want in zip([fused[0], *fused[1]], [autocast[0], *autocast[1]], [exact[0], *exact[1]]):
        scale = float(want.abs().max())
        error, plain_error = ((t.double() - want).abs().max() / scale for t in (got, plain))
        assert error <= 4 * plain_error + 1e-3, (float(error), float(plain_error))


@pytest.mark.parametrize("device", DEVICES)
def test_tf32_products_when_torch_allows_them(device):
    params = [p.detach().to(device) for p in _random_inner(2, (64, 64), seed=2).parameters()]
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        _assert_matches_float64(torch.randn(3, 4, 30).to(device), 2, params, rtol=1e-2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates_as_plain_relu_does(device):
    params = [p.detach().to(device) for p in _random_inner(2, (64, 64), seed=3).parameters()]
    z = torch.randn(70, 2)
    z[7, 1] = float("nan")
    upstream = torch.rand(70, 1)
    out, grads = _values_and_grads(z.to(device), 0, params, upstream.to(device), fused=True)
    exact, exact_grads = _values_and_grads(z, 0, [p.cpu() for p in params], upstream, fused=False)
    torch.testing.assert_close(out.cpu(), exact, equal_nan=True)
    assert out.isnan().nonzero().tolist() == [[7, 0]]
    torch.testing.assert_close(grads[0].cpu(), exact_grads[0], equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_weight_gradients_do_not_depend_on_scheduling(device):
    params = [p.detach().to(device) for p in _random_inner(2, (64, 64), seed=4).parameters()]
    z, upstream = torch.randn(4, 300).to(device), torch.randn(4, 150).to(device)
    first = _values_and_grads(z, 1, params, upstream, fused=True)[1]
    second = _values_and_grads(z, 1, params, upstream, fused=True)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("keep_signs", [True, False])
def test_the_op_opchecks_on_the_triton_backend(device, keep_signs):
    inner = _random_inner(2, (32, 16), seed=5)
    params = [p.detach().to(device).requires_grad_(True) for p in inner.parameters()]
    z = torch.randn(2, 3, 12, device=device, requires_grad=True)
    forward = (z, 2, LAYER_NORM_EPS, keep_signs, False, *params)
    torch.library.opcheck(torch.ops.lit_dendrite.inner_net.default, forward)
    out, signs, mean, rstd = inner_op.inner_net(
        z.detach(), 2, LAYER_NORM_EPS, keep_signs, False, *(p.detach() for p in params)
    )
    backward = (torch.randn_like(out), z.detach(), mean, rstd, signs, 2, LAYER_NORM_EPS, True, True, False)
    torch.library.opcheck(torch.ops.lit_dendrite.inner_net_backward.default, (*backward, *(p.detach() for p in params)))


class _OpLog(TorchDispatchMode):
    """Records the ops that run below autograd."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.slow  # 15 s under the interpreter
@pytest.mark.parametrize("device", DEVICES)
def test_network_under_autocast_takes_the_fused_op(device):
    """``impl="auto"`` on the Triton backend: a bf16 autocast training step of the MLP (4096-row layers) runs the op in
    every dendritic layer and gives the plain layers' values and gradients to bf16 tolerance."""
    torch.manual_seed(0)
    net = DendriticMLP(dropout=0.0).to(device)
    x = torch.rand(64, *net.in_shape, device=device)
    results = {}
    with torch.autocast(device, dtype=torch.bfloat16):  # the fused op's self-check (once per process), not counted
        net(x)
    for impl in ("plain", "auto"):
        net.inner.impl = impl
        net.zero_grad()
        with _OpLog() as log, torch.autocast(device, dtype=torch.bfloat16):
            logits = net(x)
        logits.float().square().sum().backward()
        fused_calls = log.ops.count(torch.ops.lit_dendrite.inner_net.default)
        results[impl] = (logits.float(), [p.grad.clone() for p in net.parameters()], fused_calls)
    assert (results["plain"][2], results["auto"][2]) == (0, len(net.hidden))
    torch.testing.assert_close(results["auto"][0], results["plain"][0], rtol=5e-2, atol=5e-2)
    for got, want in zip(results["auto"][1], results["plain"][1]):
        torch.testing.assert_close(got, want, rtol=1e-1, atol=5e-2 * float(want.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("shape", "normalized_ndim", "pool"), [((2, 6, 6, 8), 3, 2), ((5, 12), 1, 1)])
def test_frozen_table_kernel_matches_the_unfused_table(device, shape, normalized_ndim, pool):
    """LayerNorm, lookup and the exact fallback in inference, against LayerNorm + grid_sample + max-pool; a box that
    leaves some pairs outside, and a NaN (which makes its whole LayerNorm sample NaN)."""
    inner = _random_inner(2, (64, 64), seed=6).to(device).requires_grad_(False)
    table = InnerTable(inner, torch.tensor([-2.0, -2.2]), torch.tensor([2.3, 1.9]), 65).to(device)
    z = torch.randn(shape) * 1.5
    z.view(-1)[5] = float("nan")
    z = z.to(device)
    assert table.fuses(z)
    with torch.no_grad():
        got = table.normalized(z, normalized_ndim, inner, pool)
        normalized = F.layer_norm(z, z.shape[z.dim() - normalized_ndim :], eps=LAYER_NORM_EPS)
        expected = max_pool_maps(table(normalized.unflatten(-1, (-1, 2)), -1, inner), pool)
    assert table.rows_exact > 0
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert got.isnan().sum() == expected.isnan().sum() > 0


@pytest.mark.parametrize("device", [*DEVICES, *([] if INTERPRETED else ["cpu"])])  # cpu: the native kernel
@pytest.mark.parametrize("width", [40, 50])
def test_a_direct_op_call_refuses_widths_whose_signs_it_cannot_hold(device, width):
    """A second hidden width that is no multiple of 16 lost sign bits on the Triton backend: right values, wrong weight
    gradients. Every backend (native on CPU, Triton) refuses it, naming the rule, before any kernel runs."""
    params = [p.detach().to(device).requires_grad_(True) for p in _random_inner(2, (64, width)).parameters()]
    z = torch.randn(3, 40, device=device, requires_grad=True)
    with pytest.raises(ValueError, match=f"multiples of 16, got \\[64, {width}\\]"):
        out = inner_op.fused_inner_net(z, 1, LAYER_NORM_EPS, params)
        out.sum().backward()
    with pytest.raises(ValueError, match="multiples of 16"):
        torch.ops.lit_dendrite.inner_net(z, 1, LAYER_NORM_EPS, True, False, *params)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("words_per_row", [1, 4, 8])
def test_sign_offsets_stay_exact_past_2_to_the_31(device, words_per_row):
    """The kernels' sign offsets (row * words per row + word) for the last rows an input below the op's limit of
    2^31 values can have: they pass 2^31 from about 2^30 values (arity 2, width 64), and must not wrap around."""
    n_rows = inner_op.MAX_TRITON_VALUES // 2  # arity 2: the most rows the op accepts
    first_row = n_rows - 3
    words = 2 * words_per_row  # padded, as for a width of 48 padded to 64: the words past the row's are not stored
    out = torch.empty(4, words, dtype=torch.int64, device=device)
    _sign_offsets_kernel[(1,)](out, first_row, n_rows, WORDS_PER_ROW=words_per_row, WORDS=words)
    expected = [[(first_row + r) * words_per_row + w if first_row + r < n_rows and w < words_per_row else -1
                 for w in range(words)] for r in range(4)]  # fmt: skip
    assert out.cpu().tolist() == expected
