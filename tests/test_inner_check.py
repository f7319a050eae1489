"""The fused op's self-check and the fallback of ``impl="auto"``: a kernel that fails to compile, a wrong kernel, a
missing Triton and a GPU too old for a dtype each make ``auto`` take a torch path, warn once and note why, while an
explicit ``impl="fused"`` stops with the reason. Simulated on CPU: the native kernel stands in for any backend."""

import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lit_dendrite.nn import DendriticMLP, InnerNet, inner_check, inner_op, native
from lit_dendrite.nn.inner_check import PATHS, FusedPathFallback, Specialisation
from lit_dendrite.nn.inner_kernels import choose_impl


@pytest.fixture(autouse=True)
def fresh_checks():
    """Each test starts with no verdict and no path noted, and leaves none behind."""
    inner_check.self_check.cache_clear()
    PATHS.reset()
    PATHS.warned.clear()
    yield
    inner_check.self_check.cache_clear()
    PATHS.reset()
    PATHS.warned.clear()


def _training_step(net):
    x = torch.rand(200, *net.in_shape, generator=torch.Generator().manual_seed(0))
    net.zero_grad()
    net(x).square().sum().backward()
    return [p.grad.clone() for p in net.parameters()]


def _failing_compile(*args, **kwargs):
    raise RuntimeError("simulated: PTX compilation failed")


def _wrong_gradients(real):
    def backward(*args, **kwargs):
        grad_rows, sums = real(*args, **kwargs)
        return grad_rows, None if sums is None else [s * 1.5 for s in sums]  # right values, wrong weight gradients

    return backward


@pytest.mark.skipif(not native.native_available(), reason="needs the native kernel (a C compiler)")
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (lambda: ("inner_forward", _failing_compile), "failed to compile or run on cpu .RuntimeError: simulated"),
        (lambda: ("inner_backward", _wrong_gradients(native.inner_backward)), "disagrees with the plain layers"),
    ],
    ids=["compile-failure", "wrong-kernel"],
)
def test_a_broken_kernel_falls_back_with_a_warning_and_a_record(monkeypatch, fault, reason):
    torch.manual_seed(0)
    net = DendriticMLP(dropout=0.0)
    net.inner.impl = "plain"
    expected = _training_step(net)
    monkeypatch.setattr(native, *fault())
    PATHS.reset()
    net.inner.impl = "auto"
    with pytest.warns(
        FusedPathFallback, match=f"not used for cpu float32 arity 2 widths \\[64, 64\\]: its kernel {reason}"
    ):
        got = _training_step(net)
    for a, b in zip(got, expected):  # the fallback trains as the plain layers do
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    summary = PATHS.summary()
    assert summary["requested"] == ["auto"] and "fused" not in summary["used"]
    [fallback] = summary["fallbacks"]
    assert (
        fallback["specialisation"] == "cpu float32 arity 2 widths [64, 64]" and reason.split()[0] in fallback["reason"]
    )
    assert fallback["used"] in summary["used"]
    with warnings.catch_warnings():  # once per process: the next step is quiet
        warnings.simplefilter("error", FusedPathFallback)
        _training_step(net)
    net.inner.impl = "fused"
    with pytest.raises(ValueError, match=f"impl='fused' cannot run here: its kernel {reason}"):
        _training_step(net)


@pytest.mark.skipif(not native.native_available(), reason="needs the native kernel (a C compiler)")
def test_a_sound_kernel_passes_and_is_checked_once_per_specialisation(monkeypatch):
    calls = []
    real = inner_check._largest_error
    monkeypatch.setattr(inner_check, "_largest_error", lambda spec: calls.append(spec) or real(spec))
    net = DendriticMLP(dropout=0.0)
    for _ in range(2):
        _training_step(net)
    assert calls == [Specialisation("cpu", "float32", 2, (64, 64))]
    assert max(real(calls[0]).values()) < inner_check.TOLERANCE["float32"] / 10
    assert PATHS.summary() == {"requested": ["auto"], "used": ["fused"], "fallbacks": []}


def _fake_cuda_linears():
    inner = InnerNet(arity=2, hidden=(64, 64))
    for linear in inner.linears:
        linear.weight = torch.nn.Parameter(torch.empty(linear.weight.shape, device="cuda"))
        linear.bias = torch.nn.Parameter(torch.empty(linear.bias.shape, device="cuda"))
    return inner.linears


def test_a_missing_triton_is_a_fallback_on_cuda(monkeypatch):
    monkeypatch.setattr(inner_op, "triton_import_error", lambda: "Triton is not installed (pip install triton)")
    with FakeTensorMode(), pytest.warns(FusedPathFallback, match="need Triton: Triton is not installed"):
        assert choose_impl(torch.empty(1 << 16, 2, device="cuda"), _fake_cuda_linears()) == "plain"
    assert PATHS.summary()["fallbacks"][0]["used"] == "plain"


@pytest.mark.parametrize(
    ("dtype", "capability", "refused"),
    [("bfloat16", (7, 0), True), ("tf32", (7, 5), True), ("float16", (7, 0), False), ("float32", (6, 0), False)],
)
def test_compute_capability_per_dtype(monkeypatch, dtype, capability, refused):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(inner_op, "backend", lambda device: None)  # stop after the capability: no kernel here
    monkeypatch.setattr(inner_check, "_largest_error", lambda spec: dict.fromkeys(["values"], 0.0))
    reason = inner_check.self_check(Specialisation("cuda:0", dtype, 2, (64, 64)))
    if refused:
        assert reason == (
            f"its {dtype} products need compute capability 8.0 or newer, and the Tesla V100-SXM2-16GB has "
            f"{capability[0]}.{capability[1]}"
        )
    else:
        assert reason is None


def test_tf32_is_only_used_where_the_gpu_has_it(monkeypatch):
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
        assert not inner_op.tf32_products(torch.float32, torch.device("cuda:0"))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
        assert inner_op.tf32_products(torch.float32, torch.device("cuda:0"))
        assert not inner_op.tf32_products(torch.bfloat16, torch.device("cuda:0"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


@pytest.mark.skipif(not native.native_available(), reason="needs the native kernel (a C compiler)")
def test_a_run_records_its_paths_per_session_and_status_and_report_show_a_fallback(monkeypatch, tmp_path):
    """result.json: each session's requested and used paths, the fallback's reason, the device; the versions name
    torch and triton; ``sweep.py status`` and the sweep report list the run as fallen back."""
    import json

    from helpers import quick_train

    from lit_dendrite.analysis.report import write_report
    from lit_dendrite.runs import RunRecord
    from lit_dendrite.sweeps.state import format_status

    monkeypatch.setattr(native, "inner_backward", _wrong_gradients(native.inner_backward))
    run_dir = tmp_path / "sweep" / "mlp_digits_2arg" / "seed=0"
    with pytest.warns(FusedPathFallback, match="disagrees with the plain layers"):
        result = quick_train("mlp_digits_2arg", run_dir, 1, 1, "--trainer.limit_train_batches", "2")
    sessions = result["sessions"]
    assert list(sessions) == ["I_pretrain", "II_joint", "III_frozen"]
    joint = sessions["II_joint"]
    assert joint["device"] == {"type": "cpu", "name": None, "capability": None}
    assert joint["inner_path"]["requested"] == ["auto"] and "fused" not in joint["inner_path"]["used"]
    [fallback] = joint["inner_path"]["fallbacks"]
    assert fallback["specialisation"] == "cpu float32 arity 2 widths [64, 64]"
    assert "disagrees with the plain layers" in fallback["reason"]
    assert {"torch", "triton"} <= set(result["versions"])
    written = json.loads((run_dir / "result.json").read_text())
    assert written["sessions"]["II_joint"]["inner_path"] == joint["inner_path"]
    lines = RunRecord.read(run_dir).path_fallbacks
    joint_line = f"II_joint: cpu float32 arity 2 widths [64, 64] ran {fallback['used']}: {fallback['reason']}"
    assert joint_line in lines

    manifest = {"sweep": "s", "sweep_file": "s.yaml", "runs": [{"dir": "mlp_digits_2arg/seed=0", "axes": {}}]}
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps(manifest))
    status = format_status(tmp_path / "sweep")
    assert f"    fell back: {joint_line}" in status
    assert "inner net: 1 run(s) fell back from the fused op to a torch path" in status
    report = write_report(tmp_path / "sweep", n_images=4).read_text()
    assert "the inner net fell back from the fused op in II_joint: cpu float32" in report
