"""The native kernel's bf16 products (``impl="fused_bf16"``): exact bf16-rounded products with float32 sums on both of
its paths (AVX512-BF16 and the portable one), errors against float64 within those of the plain layers under autocast,
and the automatic choice under CPU autocast."""

import pytest
import torch

from lit_dendrite.nn import DendriticCNN, DendriticMLP, InnerNet, inner_op, native
from lit_dendrite.nn.inner_check import PATHS
from lit_dendrite.nn.inner_kernels import LEAN_MIN_ROWS, choose_impl, fused_inner, plain_inner
from lit_dendrite.nn.neurons import LAYER_NORM_EPS


def _random_params(arity=2, hidden=(64, 64), seed=0):
    torch.manual_seed(seed)
    inner = InnerNet(arity=arity, hidden=hidden)
    for linear in inner.linears:  # nonzero biases, so that every bias gradient is tested
        torch.nn.init.uniform_(linear.bias, -0.5, 0.5)
    return [p.detach() for p in inner.parameters()]


def _bf16(t):
    return t.to(torch.bfloat16).double()


def _bf16_emulation(rows, grad_out, params, signs):
    """What the kernel computes in float64: the thin layers exact, the hidden-to-hidden products on bf16-rounded
    operands, the last layer gated by the kernel's own signs (a bf16 rounding may flip a unit near 0)."""
    w1, b1, w2, b2, w3, b3 = (p.double() for p in params)
    rows, grad_out = rows.double(), grad_out.double()
    h = torch.relu(rows @ w1.T + b1)
    bits = signs.to(torch.int32) & 0xFFFF
    active = torch.stack([(bits >> i) & 1 for i in range(native.SIGN_BITS)], -1).reshape(len(rows), -1).double()
    out = (torch.relu(_bf16(h) @ _bf16(w2.T) + b2) * active) @ w3[0] + b3
    gated = grad_out[:, None] * active
    grad_hidden = (_bf16(gated) @ _bf16(w3[0][:, None] * w2)) * (h > 0)
    product = _bf16(gated).T @ _bf16(h)
    return out, grad_hidden @ w1, [product, gated.sum(0), (rows.T @ grad_hidden), grad_hidden.sum(0)]


def _libraries():
    """The kernel as built here (AVX512-BF16 where this CPU has it) and its portable path, forced by a build flag."""
    hardware = pytest.param(
        "built", marks=pytest.mark.skipif(not native.bf16_hardware(), reason="this CPU has no AVX512-BF16")
    )
    return [hardware, "portable"]


@pytest.fixture(scope="module")
def portable_library(tmp_path_factory):
    flags = (*native.FLAGS, "-DLIT_DENDRITE_PORTABLE_BF16")
    return native.load_kernel(native.build_kernel(tmp_path_factory.mktemp("portable_bf16"), flags))


@pytest.mark.parametrize("which", _libraries())
@pytest.mark.parametrize(("arity", "hidden", "rows"), [(2, (64, 64), 1001), (3, (48, 80), 250), (2, (16, 32), 97)])
def test_bf16_products_are_the_rounded_products_summed_in_float32(which, arity, hidden, rows, portable_library):
    """Rows that are not a multiple of the kernel's blocks and tiles, widths of 1 to 5 vectors, any arity; both
    paths, against a float64 emulation of bf16-rounded operands: only float32 summation errors remain."""
    library = portable_library if which == "portable" else native.kernel_library()
    assert library.inner_bf16_hardware() == (which == "built")
    params = _random_params(arity, hidden)
    x, grad_out = torch.randn(rows, arity) * 2, torch.randn(rows)
    out, signs = native.inner_forward(x, params, keep_signs=True, bf16=True, library=library)
    grad_x, sums = native.inner_backward(x, grad_out, params, True, True, signs=signs, bf16=True, library=library)
    recomputed = native.inner_backward(x, grad_out, params, True, True, bf16=True, library=library)
    want_out, want_grad_x, want_sums = _bf16_emulation(x, grad_out, params, signs)
    for got, want in zip([out, grad_x, *sums[:4]], [want_out, want_grad_x, *want_sums]):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    torch.testing.assert_close(recomputed, (grad_x, sums))  # recomputing h2 in bf16 gives the kept signs' gradients


def test_both_paths_agree(portable_library):
    if not native.bf16_hardware():
        pytest.skip("this CPU has no AVX512-BF16")
    params, x, grad_out = _random_params(seed=3), torch.randn(2000, 2), torch.randn(2000)
    results = []
    for library in (native.kernel_library(), portable_library):
        out, signs = native.inner_forward(x, params, keep_signs=True, bf16=True, library=library)
        backward = native.inner_backward(x, grad_out, params, True, True, signs, bf16=True, library=library)
        results.append((out, signs, backward))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def _values_and_grads(z, params, upstream, impl):
    z = z.detach().requires_grad_(True)
    params = [p.detach().requires_grad_(True) for p in params]
    if impl == "plain":
        rows = torch.nn.functional.layer_norm(z, z.shape[1:], eps=LAYER_NORM_EPS).unflatten(-1, (-1, 2))
        w1, b1, w2, b2, w3, b3 = params
        out = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(rows, w1, b1)), w2, b2)
        out = torch.nn.functional.linear(torch.relu(out), w3, b3).squeeze(-1)
    else:
        out = inner_op.fused_inner_net(z, 2, LAYER_NORM_EPS, params, bf16=impl == "fused_bf16")
    return [out.detach(), *torch.autograd.grad(out, [z, *params], upstream.to(out.dtype))]


def test_bf16_errors_against_float64_stay_within_those_of_the_plain_layers_under_autocast():
    """A dendritic layer's LayerNorm and inner net on 4000 rows: values and every gradient, measured against float64,
    err no more than a small factor of the plain layers under CPU bf16 autocast (which also round their outputs)."""
    params = _random_params(seed=1)
    z, upstream = torch.randn(4, 25, 80) * 2 + 0.5, torch.linspace(-0.5, 1, 4000).view(4, 25, 40)
    fused = _values_and_grads(z, params, upstream, "fused_bf16")
    exact = _values_and_grads(z.double(), [p.double() for p in params], upstream.double(), "plain")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = _values_and_grads(z, params, upstream, "plain")
    assert [t.dtype for t in fused] == [torch.float32] * 8
    for got, plain, want in zip(fused, autocast, exact):
        scale = float(want.abs().max())
        error, plain_error = ((t.double() - want).abs().max() / scale for t in (got, plain))
        assert error <= 2 * plain_error + 1e-3, (float(error), float(plain_error))
    torch.testing.assert_close(fused[0].double(), exact[0], rtol=1e-2, atol=1e-2 * float(exact[0].abs().max()))


def test_bf16_propagates_nan_as_plain_does():
    params = _random_params()
    inner = InnerNet(arity=2)
    inner.load_state_dict(dict(zip(inner.state_dict(), params)))
    x = torch.randn(200, 2)
    x[7, 1] = float("nan")
    y = fused_inner(x, -1, inner.linears, bf16=True)
    assert y.isnan().nonzero().tolist() == [[7]]
    torch.testing.assert_close(y, plain_inner(x, inner.linears), equal_nan=True, rtol=1e-2, atol=1e-2)


def test_auto_rule_picks_bf16_products_under_cpu_bf16_autocast_where_the_cpu_has_them(monkeypatch):
    """bf16 autocast takes the bf16 kernel on AVX512-BF16, else the float32 kernel on inputs cast up, never the plain
    layers; float32 training keeps float32 products unless ``impl="fused_bf16"`` asks."""
    linears = InnerNet(arity=2).linears
    large = torch.zeros(LEAN_MIN_ROWS["cpu"], 2)
    for hardware in (True, False):
        monkeypatch.setattr(native, "bf16_hardware", lambda hardware=hardware: hardware)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for x in (large, large.bfloat16()):
                assert choose_impl(x, linears) == ("fused_bf16" if hardware else "fused")
        with torch.autocast("cpu", dtype=torch.float16):
            assert choose_impl(large.half(), linears) == "fused"
        assert choose_impl(large, linears) == "fused"


@pytest.mark.parametrize("hardware", [True, False])
@pytest.mark.parametrize("build", [DendriticMLP, DendriticCNN])
def test_networks_under_cpu_bf16_autocast_run_the_kernel_in_every_large_layer(build, hardware, monkeypatch):
    """With AVX512-BF16 the bf16 products, without it the float32 kernel on inputs cast up; the plain layers
    nowhere, and logits and gradients that err from float64 no more than the plain layers' under autocast do."""
    if hardware and not native.bf16_hardware():
        pytest.skip("this CPU has no AVX512-BF16")
    monkeypatch.setattr(native, "bf16_hardware", lambda: hardware)
    calls = []
    kernel = native.inner_forward

    def spy(rows, params, keep_signs=False, bf16=False, type_rows=None, library=None):
        calls.append(bf16)
        return kernel(rows, params, keep_signs, bf16, type_rows, library)

    monkeypatch.setattr(native, "inner_forward", spy)
    torch.manual_seed(0)
    net = build(dropout=0.0)
    x = torch.rand(200 if build is DendriticMLP else 2, *net.in_shape)
    results = {}
    for impl in ("exact", "plain", "auto"):
        exact = impl == "exact"
        net.inner.impl = "plain" if exact else impl
        net.to(torch.double if exact else torch.float).zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not exact):
            logits = net(x.to(torch.double if exact else torch.float))
        logits.double().square().sum().backward()
        results[impl] = [logits.double(), *(p.grad.double() for p in net.parameters())]
        calls.append(impl)
    large_layers = 3 if build is DendriticMLP else 2  # with at least FUSED_MIN_ROWS rows (the CNN: batch 2)
    assert calls == ["exact", "plain", *[hardware] * large_layers, "auto"]
    for got, plain, want in zip(results["auto"], results["plain"], results["exact"]):
        scale = float(want.abs().max())
        error, plain_error = ((t - want).abs().max() / scale for t in (got, plain))
        # + 0.02: a deep net's gradients err by several percent at bf16's 8 bits, on the plain layers too (0.05-0.07
        # here), and a small tensor's error (the output bias, one sum) may be lucky on one path
        assert error <= 2 * plain_error + 0.02, (float(error), float(plain_error))


def test_fp32_training_takes_bf16_products_when_asked():
    """A net asks for them with ``neuron_args: {impl: fused_bf16}`` (``--model.net.init_args.neuron_args``)."""
    x = torch.rand(200, *DendriticMLP().in_shape)
    results = {}
    for impl in ("fused", "fused_bf16"):
        torch.manual_seed(0)
        net = DendriticMLP(dropout=0.0, neuron_args={"impl": impl})
        PATHS.reset()
        logits = net(x)
        logits.square().sum().backward()
        results[impl] = (logits, [p.grad.clone() for p in net.parameters()])
        assert PATHS.summary()["used"] == [impl]
    assert not torch.equal(results["fused"][0], results["fused_bf16"][0])
    torch.testing.assert_close(results["fused_bf16"][0], results["fused"][0], rtol=2e-2, atol=2e-2)
    for got, want in zip(results["fused_bf16"][1], results["fused"][1]):
        torch.testing.assert_close(got, want, rtol=1e-1, atol=5e-2 * float(want.abs().max()))


def test_an_unknown_inner_impl_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"neuron_args.impl\) must be one of \['auto', 'plain', 'lean', 'fused', "):
        DendriticMLP(neuron_args={"impl": "bf16"})


def test_bf16_products_elsewhere_are_refused_with_a_clear_error():
    params = _random_params()
    assert "native CPU kernel's" in inner_op.mismatch(torch.empty(4, 2, device="meta"), params, bf16=True)
    inner = InnerNet(arity=2).double()
    inner.impl = "fused_bf16"
    with pytest.raises(ValueError, match="impl='fused_bf16' cannot run here: it needs float32 CPU inputs"):
        inner(torch.randn(3, 2, dtype=torch.double))
