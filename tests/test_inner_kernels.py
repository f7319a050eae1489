"""The memory-lean inner-net evaluation computes exactly what plain autograd computes."""

import pytest
import torch

from lit_dendrite.nn import DendriticCNN, DendriticMLP, InnerNet, maybe_compile
from lit_dendrite.nn.inner_kernels import LEAN_MIN_ROWS, choose_impl, lean_inner, plain_inner

LAYOUTS = [((6, 5, 2), -1), ((3, 4, 2, 5, 6), 2), ((2, 3, 2, 9, 11), 2), ((4, 3, 1, 7), 2)]


def _value_and_grads(inner, x, dim, impl, chunk_rows=None):
    x = x.detach().requires_grad_(True)
    y = (
        plain_inner(x.movedim(dim, -1), inner.linears)
        if impl == "plain"
        else lean_inner(x, dim, inner.linears, chunk_rows)
    )
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


@pytest.mark.parametrize("build", [DendriticMLP, DendriticCNN])
def test_whole_network_gradients_equal_between_implementations(build):
    torch.manual_seed(0)
    net = build(dropout=0.0).double()
    x = torch.rand(3, *net.in_shape, dtype=torch.double)
    results = {}
    for impl in ("plain", "lean"):
        net.inner.impl, net.inner.chunk_rows = impl, 500
        net.zero_grad()
        logits = net(x)
        logits.square().sum().backward()
        results[impl] = (logits.detach(), [p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(results["lean"][0], results["plain"][0])
    for a, b in zip(results["lean"][1], results["plain"][1]):
        torch.testing.assert_close(a, b)


def test_frozen_inner_net_gets_no_gradient_but_inputs_do():
    inner = InnerNet(arity=2).requires_grad_(False)
    x = torch.randn(3, 5, 2, 4, 4, requires_grad=True)
    lean_inner(x, 2, inner.linears, 16).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in inner.parameters())


def test_inputs_without_gradient_still_train_the_inner_net():
    torch.manual_seed(0)
    inner = InnerNet(arity=2).double()
    x = torch.randn(50, 2, dtype=torch.double)
    grads = {}
    for impl in ("plain", "lean"):
        y = plain_inner(x, inner.linears) if impl == "plain" else lean_inner(x, -1, inner.linears, 16)
        grads[impl] = torch.autograd.grad(y.square().sum(), list(inner.parameters()))
    for a, b in zip(grads["lean"], grads["plain"]):
        torch.testing.assert_close(a, b)


def test_auto_rule_picks_by_size_and_falls_back_to_plain_under_autocast():
    cpu = torch.device("cpu")
    assert choose_impl(10, cpu) == "plain"
    assert choose_impl(LEAN_MIN_ROWS["cpu"], cpu) == "lean"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert choose_impl(LEAN_MIN_ROWS["cpu"], cpu) == "plain"


def test_bad_settings_are_refused_with_a_clear_error():
    inner = InnerNet(arity=2)
    inner.impl = "fast"
    with pytest.raises(ValueError, match="impl must be one of"):
        inner(torch.randn(3, 2))
    with pytest.raises(ValueError, match="chunk_rows"):
        lean_inner(torch.randn(3, 2), -1, inner.linears, 0)


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
