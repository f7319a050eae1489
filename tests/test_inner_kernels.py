"""The memory-lean inner-net evaluations (torch and native) compute what plain autograd computes."""

import pytest
import torch

from lit_dendrite.nn import DendriticCNN, DendriticMLP, InnerNet, maybe_compile, native
from lit_dendrite.nn.inner_kernels import LEAN_MIN_ROWS, choose_impl, fused_inner, lean_inner, plain_inner
from lit_dendrite.nn.neurons import learned_neurons

LAYOUTS = [((6, 5, 2), -1), ((3, 4, 2, 5, 6), 2), ((2, 3, 2, 9, 11), 2), ((4, 3, 1, 7), 2)]


def _value_and_grads(inner, x, dim, impl, chunk_rows=None):
    x = x.detach().requires_grad_(True)
    if impl == "plain":
        y = plain_inner(x.movedim(dim, -1), inner.linears)
    elif impl == "fused":
        y = fused_inner(x, dim, inner.linears)
    else:
        y = lean_inner(x, dim, inner.linears, chunk_rows)
    upstream = torch.linspace(-0.5, 1, y.numel(), dtype=y.dtype).view(y.shape)
    grads = torch.autograd.grad(y, [x, *inner.parameters()], upstream)
    return y, grads


@pytest.mark.parametrize(("shape", "dim"), LAYOUTS)
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 100_000])
def test_lean_matches_plain_values_and_gradients(shape, dim, chunk_rows):
    torch.manual_seed(0)
    inner = InnerNet(arity=shape[dim]).double()
    x = torch.randn(shape, dtype=torch.double) * 2
    y_plain, g_plain = _value_and_grads(inner, x, dim, "plain")
    y_lean, g_lean = _value_and_grads(inner, x, dim, "lean", chunk_rows)
    torch.testing.assert_close(y_lean, y_plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_lean, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hidden", [(5,), (4, 6, 3), (64, 64)])
@pytest.mark.parametrize("arity", [1, 2, 3])
def test_lean_matches_plain_for_any_inner_depth(hidden, arity):
    torch.manual_seed(1)
    inner = InnerNet(arity=arity, hidden=hidden).double()
    for linear in inner.linears:  # nonzero biases, so that every bias gradient is tested
        torch.nn.init.uniform_(linear.bias, -0.5, 0.5)
    x = torch.randn(37, arity, dtype=torch.double)
    y_plain, g_plain = _value_and_grads(inner, x, -1, "plain")
    y_lean, g_lean = _value_and_grads(inner, x, -1, "lean", 10)
    torch.testing.assert_close(y_lean, y_plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_lean, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_lean_float32_gradients_within_float_tolerance():
    torch.manual_seed(0)
    inner = InnerNet(arity=2)
    x = torch.randn(4, 6, 2, 10, 10)
    y_plain, g_plain = _value_and_grads(inner, x, 2, "plain")
    y_lean, g_lean = _value_and_grads(inner, x, 2, "lean", 256)
    torch.testing.assert_close(y_lean, y_plain)
    for a, b in zip(g_lean, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def _with_random_biases(inner):
    for linear in inner.linears:  # nonzero biases, so that every bias gradient is tested
        torch.nn.init.uniform_(linear.bias, -0.5, 0.5)
    return inner


@pytest.mark.parametrize(("shape", "dim"), [*LAYOUTS, ((1000 + 5, 2), -1), ((96, 3), -1)])
@pytest.mark.parametrize("hidden", [(64, 64), (16, 32), (48, 80)])
def test_native_float32_matches_plain_float64(shape, dim, hidden):
    """Rows that are not a multiple of the kernel's blocks and tiles, widths of 1 to 5 vectors, any arity."""
    torch.manual_seed(2)
    inner = _with_random_biases(InnerNet(arity=shape[dim], hidden=hidden))
    x = torch.randn(shape) * 2
    y_native, g_native = _value_and_grads(inner, x, dim, "fused")
    y_plain, g_plain = _value_and_grads(inner.double(), x.double(), dim, "plain")
    torch.testing.assert_close(y_native, y_plain.float(), rtol=1e-5, atol=1e-5)
    for a, b in zip(g_native, g_plain):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_native_weight_gradients_stay_accurate_over_many_rows():
    """Sums over 400k rows (a CNN layer's worth) keep float32 accuracy: float32 summed row after row drifted to 3e-5."""
    torch.manual_seed(0)
    inner = _with_random_biases(InnerNet(arity=2))
    x, upstream = torch.randn(400_000, 2), torch.rand(400_000)  # gradients of one sign: the sums grow with the rows
    fused_inner(x, -1, inner.linears).backward(upstream)
    exact = InnerNet(arity=2).double()
    exact.load_state_dict(inner.state_dict())
    plain_inner(x.double(), exact.linears).backward(upstream.double())
    for got, expected in zip(inner.parameters(), exact.parameters()):
        assert (got.grad.double() - expected.grad).abs().max() < 1e-6 * expected.grad.abs().max()


def test_native_propagates_nan_as_plain_does():
    torch.manual_seed(0)
    inner = InnerNet(arity=2)
    x = torch.randn(200, 2)
    x[7, 1] = float("nan")
    y_native, g_native = _value_and_grads(inner, x, -1, "fused")
    y_plain, g_plain = _value_and_grads(inner, x, -1, "plain")
    torch.testing.assert_close(y_native, y_plain, equal_nan=True)
    assert y_native.isnan().nonzero().tolist() == [[7]]
    torch.testing.assert_close(g_native[0], g_plain[0], equal_nan=True)


def test_native_gives_the_same_values_on_one_and_two_threads():
    torch.manual_seed(0)
    inner = InnerNet(arity=2)
    x = torch.randn(5000, 2)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(_value_and_grads(inner, x, -1, "fused"))
    finally:
        torch.set_num_threads(threads)
    (y1, g1), (y2, g2) = results
    assert torch.equal(y1, y2) and torch.equal(g1[0], g2[0])  # row by row: no sum depends on the thread count
    for a, b in zip(g1[1:], g2[1:]):  # sums over rows, added in another order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def test_portable_native_build_gives_the_same_values(tmp_path):
    torch.manual_seed(0)
    inner = _with_random_biases(InnerNet(arity=2, hidden=(48, 64)))
    params = [p.detach() for p in inner.parameters()]
    portable = native.load_kernel(native.build_kernel(tmp_path, (*native.FLAGS, "-mno-avx512f")))
    rows, grad_out = torch.randn(1001, 2), torch.randn(1001)
    results = []
    for library in (None, portable):
        out, signs = native.inner_forward(rows, params, keep_signs=True, library=library)
        kept = native.inner_backward(rows, grad_out, params, True, True, signs=signs, library=library)
        recomputed = native.inner_backward(rows, grad_out, params, True, True, library=library)
        results.append((out, signs, kept, recomputed))
    assert torch.equal(results[0][1], results[1][1])  # the same sign bits from both ways of packing them
    torch.testing.assert_close(results[1], results[0])
    torch.testing.assert_close(results[0][2], results[0][3])  # kept signs give what recomputing h2 gives


@pytest.mark.parametrize("build", [DendriticMLP, DendriticCNN])
@pytest.mark.parametrize(("impl", "dtype"), [("lean", torch.double), ("fused", torch.float)])
def test_whole_network_gradients_equal_between_implementations(build, impl, dtype):
    torch.manual_seed(0)
    net = build(dropout=0.0).to(dtype)
    x = torch.rand(3, *net.in_shape, dtype=dtype)
    results = {}
    for name in ("plain", impl):
        net.inner.impl, net.inner.chunk_rows = name, 500
        net.zero_grad()
        logits = net(x)
        logits.square().sum().backward()
        results[name] = (logits.detach(), [p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(results[impl][0], results["plain"][0])
    for a, b in zip(results[impl][1], results["plain"][1]):
        float_tolerance = {"rtol": 1e-4, "atol": 1e-5 * float(b.abs().max())}
        torch.testing.assert_close(a, b, **({} if dtype == torch.double else float_tolerance))


def test_native_layers_give_the_same_gradients_twice_through_a_retained_graph():
    """The first backward uses the signs kept by the forward pass and frees them; a second one recomputes them."""
    torch.manual_seed(0)
    net = DendriticCNN(dropout=0.0)
    loss = net(torch.rand(2, *net.in_shape)).square().sum()
    first = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(net.parameters()))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_hooks_on_a_neuron_see_its_inputs_on_the_fused_paths():
    """The native layers fuse LayerNorm and the inner net, bypassing the neuron's forward, unless it has hooks."""
    torch.manual_seed(0)
    net = DendriticCNN(dropout=0.0)
    x = torch.rand(2, *net.in_shape)
    neuron = learned_neurons(net)["features.0.neuron"]
    expected = net(x)
    seen = []
    neuron.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    net(x).sum().backward()
    assert seen == [(2, 30, 30, 60, 2)]
    torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("impl", ["lean", "fused"])
def test_frozen_inner_net_gets_no_gradient_but_inputs_do(impl):
    torch.manual_seed(0)
    inner = InnerNet(arity=2)
    x = torch.randn(3, 5, 2, 4, 4)
    _, expected = _value_and_grads(inner, x, 2, "plain")
    inner.requires_grad_(False)
    x.requires_grad_(True)
    out = lean_inner(x, 2, inner.linears, 16) if impl == "lean" else fused_inner(x, 2, inner.linears)
    out.backward(torch.linspace(-0.5, 1, out.numel()).view(out.shape))
    torch.testing.assert_close(x.grad, expected[0])
    assert all(p.grad is None for p in inner.parameters())


@pytest.mark.parametrize("impl", ["lean", "fused"])
def test_inputs_without_gradient_still_train_the_inner_net(impl):
    torch.manual_seed(0)
    inner = InnerNet(arity=2)
    x = torch.randn(50, 2)
    grads = {}
    for name in ("plain", impl):
        if name == "plain":
            y = plain_inner(x, inner.linears)
        else:
            y = lean_inner(x, -1, inner.linears, 16) if impl == "lean" else fused_inner(x, -1, inner.linears)
        grads[name] = torch.autograd.grad(y.square().sum(), list(inner.parameters()))
    for a, b in zip(grads[impl], grads["plain"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_auto_rule_picks_by_size_dtype_and_keeps_the_fused_op_under_autocast(monkeypatch):
    linears = InnerNet(arity=2).linears
    large, small = torch.zeros(LEAN_MIN_ROWS["cpu"], 2), torch.zeros(10, 2)
    assert choose_impl(small, linears) == "plain"
    assert choose_impl(large, linears) == "fused"
    assert choose_impl(large.double(), InnerNet(arity=2).double().linears) == "lean"
    assert choose_impl(large, InnerNet(arity=2, hidden=(20, 64)).linears) == "lean"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the native kernel's choices: tests/test_inner_bf16.py
        assert choose_impl(large.double(), InnerNet(arity=2).double().linears) == "plain"
    monkeypatch.setenv("LIT_DENDRITE_NATIVE", "0")
    assert choose_impl(large, linears) == "lean"


def test_bad_settings_are_refused_with_a_clear_error():
    inner = InnerNet(arity=2)
    inner.impl = "fast"
    with pytest.raises(ValueError, match="impl must be one of"):
        inner(torch.randn(3, 2))
    with pytest.raises(ValueError, match="chunk_rows"):
        lean_inner(torch.randn(3, 2), -1, inner.linears, 0)
    inner.impl = "fused"
    with pytest.raises(ValueError, match="needs float32 CPU inputs.*use impl='auto'"):
        inner.double()(torch.randn(3, 2, dtype=torch.double))
    with pytest.raises(ValueError, match="multiples of 16, got \\[5, 7\\]"):
        fused_inner(torch.randn(3, 2), -1, InnerNet(arity=2, hidden=(5, 7)).linears)
    with pytest.raises(ValueError, match="2 hidden layers"):
        fused_inner(torch.randn(3, 2), -1, InnerNet(arity=2, hidden=(16,)).linears)


def test_implementation_settings_are_not_in_the_state_dict():
    inner = InnerNet(arity=2)
    inner.impl, inner.chunk_rows = "lean", 128
    assert list(inner.state_dict()) == [f"linears.{i}.{k}" for i in range(3) for k in ("weight", "bias")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("shape", "dim"), LAYOUTS)
def test_lean_matches_plain_on_cuda(shape, dim):
    torch.manual_seed(0)
    inner = InnerNet(arity=shape[dim]).cuda()
    x = torch.randn(shape, device="cuda") * 2
    torch.backends.cuda.matmul.allow_tf32 = False
    y_plain, g_plain = _value_and_grads(inner, x, dim, "plain")
    y_lean, g_lean = _value_and_grads(inner, x, dim, "lean", 50)
    torch.testing.assert_close(y_lean, y_plain)
    for a, b in zip(g_lean, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_maybe_compile_keeps_the_checkpoint_keys():
    net = DendriticMLP()
    keys = list(net.state_dict())
    assert maybe_compile(net, enabled=False) is net
    assert maybe_compile(net, enabled=True) is net
    assert list(net.state_dict()) == keys
