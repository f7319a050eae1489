"""The fused inner net as a torch custom op: registration, torch.compile and the automatic choice on CUDA."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode

from lit_dendrite.nn import DendriticCNN, DendriticMLP, InnerNet, inner_check, inner_op
from lit_dendrite.nn.inner_kernels import choose_impl
from lit_dendrite.nn.neurons import LAYER_NORM_EPS


def op_arguments(
    arity=2, hidden=(32, 16), shape=(3, 4, 10), normalized_ndim=2, keep_signs=True, bf16=False, dtype=None, seed=0
):
    """Arguments of ``lit_dendrite::inner_net`` and of its backward op for a small random problem."""
    torch.manual_seed(seed)
    inner = InnerNet(arity=arity, hidden=hidden)
    for linear in inner.linears:
        torch.nn.init.uniform_(linear.bias, -0.5, 0.5)
    params = [p.detach().requires_grad_(True) for p in inner.parameters()]
    z = (torch.randn(*shape[:-1], shape[-1] * arity // 2) * 2).to(dtype).requires_grad_(True)
    forward = (z, normalized_ndim, LAYER_NORM_EPS, keep_signs, bf16, *params)
    out, signs, mean, rstd = inner_op.inner_net(*[a.detach() if torch.is_tensor(a) else a for a in forward])
    backward = (torch.randn_like(out), z.detach(), mean, rstd, signs, normalized_ndim, LAYER_NORM_EPS, True, True,
                bf16, *(p.detach() for p in params))  # fmt: skip
    return forward, backward


@pytest.mark.parametrize(
    ("normalized_ndim", "keep_signs", "bf16", "dtype"),
    [(0, True, False, None), (2, True, True, None), (1, False, False, None), (0, True, True, torch.bfloat16)],
)
def test_the_op_and_its_backward_pass_opcheck(normalized_ndim, keep_signs, bf16, dtype):
    """Schema, fake tensors, autograd registration and AOT dispatch (what torch.compile relies on); a bf16 input (as
    CPU autocast gives it) is cast to float32 inside and its values come back in bf16."""
    forward, backward = op_arguments(normalized_ndim=normalized_ndim, keep_signs=keep_signs, bf16=bf16, dtype=dtype)
    torch.library.opcheck(torch.ops.lit_dendrite.inner_net.default, forward)
    torch.library.opcheck(torch.ops.lit_dendrite.inner_net_backward.default, backward)


@pytest.mark.parametrize("build", [DendriticMLP, DendriticCNN])
def test_compiled_network_keeps_the_fused_op_in_one_graph(build):
    torch.manual_seed(0)
    net = build(dropout=0.0)
    x = torch.rand(2 if build is DendriticCNN else 200, *net.in_shape)
    expected = net(x)
    expected.square().sum().backward()
    expected_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    counter = CompileCounterWithBackend("aot_eager")
    logits = torch.compile(net, backend=counter, fullgraph=True)(x)
    logits.square().sum().backward()
    ops = [node.target for graph in counter.graphs for node in graph.graph.nodes]
    # The layers with at least FUSED_MIN_ROWS rows: the MLP's three (batch 200), the CNN's first two (batch 2).
    assert ops.count(torch.ops.lit_dendrite.inner_net.default) == (3 if build is DendriticMLP else 2)
    torch.testing.assert_close(logits, expected)
    for got, want in zip((p.grad for p in net.parameters()), expected_grads):
        torch.testing.assert_close(got, want)


def _fake_cuda_linears(hidden=(64, 64)):
    inner = InnerNet(arity=2, hidden=hidden)
    for linear in inner.linears:
        linear.weight = torch.nn.Parameter(torch.empty(linear.weight.shape, device="cuda"))
        linear.bias = torch.nn.Parameter(torch.empty(linear.bias.shape, device="cuda"))
    return inner.linears


def test_auto_rule_picks_the_fused_op_on_cuda_at_every_precision_and_under_compile(monkeypatch):
    """The decision for CUDA tensors, made on fake CUDA tensors (shapes, dtypes and devices, no data): the Triton
    kernel for float32, bf16 and fp16 inputs of any size, also while torch.compile traces (given that the kernel passes
    its self-check on the device, which needs a real one: tests/test_inner_check.py)."""
    monkeypatch.setattr(inner_check, "self_check", lambda spec: None)
    with FakeTensorMode():
        linears = _fake_cuda_linears()
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            assert choose_impl(torch.empty(7, 2, device="cuda", dtype=dtype), linears) == "fused"
        assert choose_impl(torch.empty(7, 2, device="cuda", dtype=torch.double), linears) == "plain"
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert choose_impl(torch.empty(1 << 23, 2, device="cuda", dtype=torch.bfloat16), linears) == "fused"
        assert choose_impl(torch.empty(1 << 23, 2, device="cuda"), _fake_cuda_linears((48, 20))) == "plain"
        out, signs, mean, rstd = inner_op.inner_net(
            torch.empty(5, 6, 8, device="cuda"), 2, 1e-5, True, False, *linears.parameters()
        )
        assert (out.shape, signs.shape, mean.shape, out.device.type) == ((5, 6, 4), (120, 4), (5, 1, 1), "cuda")


def test_the_op_refuses_what_no_backend_runs():
    params = [p.detach() for p in InnerNet(arity=2, hidden=(64, 64)).parameters()]
    assert "no kernel for meta" in inner_op.mismatch(torch.empty(4, 2, device="meta"), params)
    assert "multiples of 16" in inner_op.mismatch(
        torch.empty(4, 2), [p.detach() for p in InnerNet(2, (8, 8)).parameters()]
    )
