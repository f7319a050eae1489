"""The frozen fast path: a tabulated inner net gives the same model, exact outside its box, trainable outer net."""

import pytest
import torch

from lit_dendrite.nn import DendriticCNN, DendriticMLP, InnerNet, native
from lit_dendrite.nn.neurons import LAYER_NORM_EPS, LearnedNeuron
from lit_dendrite.nn.tabulated import exact_inner, tabulate_inner, tabulation_report, use_exact_inner


def _mlp(neuron="2arg"):
    torch.manual_seed(0)
    return DendriticMLP(neuron=neuron, dropout=0.0).eval()


def _images(n=64, seed=1, shape=(1, 28, 28)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("build", [DendriticMLP, DendriticCNN])
def test_model_evaluated_both_ways_gives_near_identical_logits(build):
    torch.manual_seed(0)
    net = build(dropout=0.0).eval()
    shape = net.in_shape
    reports = tabulate_inner(net, calibration=[_images(8, seed=0, shape=shape)])
    x = _images(8, seed=1, shape=shape)
    with torch.no_grad():
        fast = net(x)
        with exact_inner(net):
            exact = net(x)
    assert torch.equal(fast.argmax(1), exact.argmax(1))
    assert (fast - exact).abs().max() < 1e-2 * exact.abs().max()
    for report in reports.values():
        assert report["max_abs_error_box"] < 5e-3 * report["output_range"]
        assert report["max_abs_error_inputs"] <= report["max_abs_error_box"] * 2


def test_inputs_outside_the_box_are_evaluated_exactly():
    inner = InnerNet(arity=2)
    neuron = LearnedNeuron(inner)
    net = torch.nn.Sequential(neuron)
    tabulate_inner(net, input_range=(-0.5, 0.5))
    x = torch.tensor([[0.1, 0.2], [3.0, 0.0], [0.0, -7.0], [float("nan"), 0.0]])
    with torch.no_grad():
        out = neuron(x)
        exact = inner(x)
    torch.testing.assert_close(out[1:3], exact[1:3])
    assert out[3].isnan()
    assert abs(out[0] - exact[0]) < 1e-3
    assert tabulation_report(net)["0"]["exact_fraction"] == 0.75


@pytest.mark.parametrize("layout", ["rows", "channels_first"])
def test_stray_rows_anywhere_in_a_large_input_are_evaluated_exactly(layout):
    torch.manual_seed(0)
    inner = InnerNet(arity=2)
    neuron = LearnedNeuron(inner)
    tabulate_inner(torch.nn.Sequential(neuron), input_range=(-1.0, 1.0))
    rows = torch.rand(6 * 512 + 37, 2) - 0.5
    stray = [3, 1700, 1701, 2600, len(rows) - 1]
    rows[stray] = torch.tensor([[1.5, 0.0], [0.0, -1.2], [9.0, 9.0], [float("nan"), 0.0], [0.3, -4.0]])
    x, dim = (rows, -1) if layout == "rows" else (rows.t().reshape(1, 2, -1), 1)
    with torch.no_grad():
        out = neuron(x, dim).reshape(-1)
        exact = inner(rows)
    torch.testing.assert_close(out[stray], exact[stray], equal_nan=True)
    assert out[2600].isnan()
    inside = torch.ones(len(rows), dtype=torch.bool)
    inside[stray] = False
    assert (out[inside] - exact[inside]).abs().max() < 1e-3
    assert neuron.table.rows_exact == len(stray)


def test_table_with_stray_rows_runs_under_bf16_autocast():
    inner = InnerNet(arity=2)
    neuron = LearnedNeuron(inner)
    tabulate_inner(torch.nn.Sequential(neuron), input_range=(-1.0, 1.0))
    rows = torch.rand(100, 2) - 0.5
    rows[7] = torch.tensor([3.0, 0.0])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = neuron(rows)
    exact = inner(rows).detach()
    assert torch.isfinite(out).all()
    assert (out.float() - exact).abs().max() < 0.05 * exact.abs().max()


def test_gradients_reach_the_outer_net_through_the_table_and_the_inner_net_stays_frozen():
    net = _mlp().train()
    tabulate_inner(net, calibration=[(_images(32), torch.zeros(32))])
    inner_before = [p.clone() for p in net.inner.parameters()]
    optimizer = torch.optim.SGD(net.outer_parameters(), lr=0.1)
    x, y = _images(32, seed=2), torch.arange(32) % 10
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.outer_parameters())
    assert all(not p.requires_grad and p.grad is None for p in net.inner.parameters())
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(inner_before, net.inner.parameters()))
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(net(x), y) < loss


def test_table_input_gradient_approximates_the_exact_gradient():
    inner = InnerNet(arity=2)
    net = torch.nn.Sequential(LearnedNeuron(inner))
    tabulate_inner(net, input_range=(-3, 3))
    x = torch.rand(2000, 2) * 5 - 2.5
    grads = []
    for context in (torch.enable_grad, lambda: exact_inner(net)):
        with context():
            xr = x.clone().requires_grad_(True)
            net(xr).sum().backward()
            grads.append(xr.grad)
    cosine = torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0)
    assert cosine > 0.99


def test_exact_inner_restores_the_tables_and_use_exact_inner_drops_them():
    net = _mlp()
    tabulate_inner(net, input_range=(-6, 6))
    names = set(tabulation_report(net))
    assert len(names) == 3
    with exact_inner(net):
        assert tabulation_report(net) == {}
    assert set(tabulation_report(net)) == names
    use_exact_inner(net)
    assert tabulation_report(net) == {}


def test_a_stale_or_unfrozen_table_refuses_to_run():
    net = _mlp()
    state_keys = list(net.state_dict())
    tabulate_inner(net, input_range=(-6, 6))
    assert list(net.state_dict()) == state_keys
    with torch.no_grad():
        net.inner.linears[1].bias.add_(0.1)
    with pytest.raises(RuntimeError, match="changed after it was tabulated"):
        net(_images(2))
    with torch.no_grad(), pytest.raises(RuntimeError, match="changed after it was tabulated"):
        net(_images(2))  # the native path checks too
    tabulate_inner(net, input_range=(-6, 6))
    net.inner.requires_grad_(True)
    with pytest.raises(RuntimeError, match="trainable but tabulated"):
        net(_images(2))


@pytest.mark.parametrize(("neuron", "grid", "tolerance"), [("1arg", None, 1e-3), ("3arg", 33, 5e-2)])
def test_one_and_three_argument_tables(neuron, grid, tolerance):
    net = _mlp(neuron)
    reports = tabulate_inner(net, calibration=[_images(32)], grid=grid)
    assert all(r["max_abs_error_box"] < tolerance * r["output_range"] for r in reports.values())
    x = _images(16, seed=3)
    with torch.no_grad():
        fast = net(x)
        with exact_inner(net):
            exact = net(x)
    assert (fast - exact).abs().max() < tolerance * exact.abs().max()


def test_bad_arguments_are_refused():
    net = _mlp()
    with pytest.raises(ValueError, match="exactly one of"):
        tabulate_inner(net)
    with pytest.raises(ValueError, match="no batches"):
        tabulate_inner(net, calibration=[])
    with pytest.raises(ValueError, match="no learned neurons"):
        tabulate_inner(DendriticMLP(neuron="relu"), input_range=(-1, 1))


def test_the_native_kernel_builds_on_this_machine():
    """The fused CPU path is what the fast-path figures measure; a silent fallback to pure torch would hide a break."""
    assert native.native_available()


def _fused_and_torch_outputs(net, x, monkeypatch):
    with torch.no_grad():
        fused = net(x)
        exact_fused = sum(t["exact_fraction"] for t in tabulation_report(net).values())
        with monkeypatch.context() as patch:
            patch.setenv("LIT_DENDRITE_NATIVE", "0")
            use_torch = net(x)
    return fused, use_torch, exact_fused


@pytest.mark.parametrize("build", [DendriticMLP, DendriticCNN])
def test_fused_layer_norm_and_lookup_match_the_torch_path(build, monkeypatch):
    torch.manual_seed(0)
    net = build(dropout=0.0).eval()
    tabulate_inner(net, calibration=[_images(4, seed=0, shape=net.in_shape)], margin=0.0)
    x = _images(9, seed=1, shape=net.in_shape)  # other images than calibration: some pairs fall outside the boxes
    fused, use_torch, exact_fraction = _fused_and_torch_outputs(net, x, monkeypatch)
    assert exact_fraction > 0
    assert not torch.equal(fused, use_torch)  # the native path ran: it rounds differently from the torch path
    torch.testing.assert_close(fused, use_torch, rtol=1e-4, atol=1e-4 * use_torch.abs().max().item())
    with torch.no_grad(), exact_inner(net):
        exact = net(x)
    assert torch.equal(fused.argmax(1), exact.argmax(1))


def test_fused_path_evaluates_pairs_outside_the_box_exactly_including_nan():
    torch.manual_seed(0)
    inner = InnerNet(arity=2)
    neuron = LearnedNeuron(inner)
    tabulate_inner(torch.nn.Sequential(neuron), input_range=(-2.0, 2.0))
    z = torch.rand(3, 5, 2 * 4101) * 2 - 1  # 3 samples of (5, 4101 pairs): blocks, a tail and rows not a multiple of 16
    stray = [(0, 0, 0), (0, 4, 8000), (1, 2, 4097), (2, 4, 8201)]
    for sample, row, feature in stray:
        z[sample, row, feature] = 40.0
    z[2, 0, 3] = float("nan")
    with torch.no_grad():
        fused = neuron.normalized(z, 2)
        normalized = torch.nn.functional.layer_norm(z, z.shape[1:]).unflatten(-1, (-1, 2))
        exact = inner(normalized)
    assert fused.shape == (3, 5, 4101)
    assert fused[2].isnan().all()  # a NaN anywhere makes its sample's LayerNorm NaN
    outside = (normalized.abs() > 2.0).any(-1)
    assert outside[:2].sum() == 3
    torch.testing.assert_close(fused[:2][outside[:2]], exact[:2][outside[:2]])
    inside = ~outside[:2]
    assert (fused[:2][inside] - exact[:2][inside]).abs().max() < 2e-3
    assert neuron.table.rows_exact == 3 + 5 * 4101


def test_fused_path_gives_the_same_values_on_one_and_two_threads():
    neuron = LearnedNeuron(InnerNet(arity=2))
    tabulate_inner(torch.nn.Sequential(neuron), input_range=(-2.0, 2.0))
    z = torch.randn(7, 3 * 4096 + 10, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        outputs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outputs.append(neuron.normalized(z, 1))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1])


def test_kernel_build_is_cached_and_a_failing_compiler_is_reported(tmp_path, monkeypatch):
    library = native.build_kernel(tmp_path)
    built_at = library.stat().st_mtime_ns
    assert native.build_kernel(tmp_path) == library
    assert library.stat().st_mtime_ns == built_at
    loaded = native.load_kernel(library)
    assert loaded.layer_norm_table_lookup is not None and loaded.inner_backward is not None
    monkeypatch.setenv("CC", "false")
    with pytest.raises(RuntimeError, match="could not build"):
        native.build_kernel(tmp_path / "other")
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(RuntimeError, match="no C compiler"):
        native.build_kernel(tmp_path / "other")
    monkeypatch.setenv("LIT_DENDRITE_NATIVE", "0")
    assert not native.native_available()


def test_the_portable_build_for_cpus_without_avx512_gives_the_same_values(tmp_path):
    neuron = LearnedNeuron(InnerNet(arity=2))
    tabulate_inner(torch.nn.Sequential(neuron), input_range=(-2.0, 2.0))
    table = neuron.table
    portable = native.load_kernel(native.build_kernel(tmp_path, (*native.FLAGS, "-mno-avx512f")))
    z = torch.randn(4, 2 * 1003, generator=torch.Generator().manual_seed(0)) * 1.2
    z[1, 10] = 50.0
    (values, mean, rstd, outside), portable_result = (
        native.normalized_table_lookup(
            z, 1, table.cells, table.index_scale, table.index_offset, LAYER_NORM_EPS, library=library
        )
        for library in (native.kernel_library(), portable)
    )
    assert len(outside) > 1
    assert torch.equal(portable_result[3], outside)
    torch.testing.assert_close(portable_result[0], values, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(portable_result[1:3], (mean, rstd))


def test_fused_pooling_recomputes_windows_with_a_pair_outside_the_box_exactly():
    torch.manual_seed(0)
    inner = InnerNet(arity=2)
    neuron = LearnedNeuron(inner)
    tabulate_inner(torch.nn.Sequential(neuron), input_range=(-2.0, 2.0))
    z = torch.rand(3, 7, 9, 2 * 21) * 2 - 1  # odd H and W: the last row and column are dropped, as by max_pool2d
    z[0, 2, 5, 7] = 40.0  # unit 3's pair, in the window of output (0, 1, 2)
    z[2, 6, 8, 0] = 40.0  # in the dropped row: no exact work, but it still counts in the LayerNorm
    with torch.no_grad():
        fused = neuron.normalized(z, 3, pool=2)
        normalized = torch.nn.functional.layer_norm(z, z.shape[1:]).unflatten(-1, (-1, 2))
        exact = torch.nn.functional.max_pool2d(inner(normalized).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    assert fused.shape == (3, 3, 4, 21)
    torch.testing.assert_close(fused[0, 1, 2, 3], exact[0, 1, 2, 3])
    assert (fused - exact).abs().max() < 2e-3
    assert neuron.table.rows_exact == 4
    assert neuron.table.rows_total == fused.numel() * 4


def test_without_a_compiler_tables_warn_and_use_the_torch_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    monkeypatch.setenv("LIT_DENDRITE_CACHE", str(tmp_path))
    native.kernel_library.cache_clear()
    try:
        net = _mlp()
        with pytest.warns(RuntimeWarning, match="native CPU kernels are unavailable.*install gcc"):
            tabulate_inner(net, calibration=[_images(8)])
        assert not native.native_available()
        x = _images(4, seed=2)
        with torch.no_grad():
            out = net(x)
        with exact_inner(net), torch.no_grad():
            exact = net(x)
        assert (out - exact).abs().max() < 1e-2 * exact.abs().max()
    finally:
        native.kernel_library.cache_clear()
