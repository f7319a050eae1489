"""The cell-type neuron: the unit-to-type rule, each type's inner net on its block, its fast paths, and the
celltypes nets under the protocol."""

import numpy as np
import pytest
import torch
from helpers import assert_reload_gives_the_tested_accuracy, quick_train

from lit_dendrite.analysis.report import write_report
from lit_dendrite.analysis.surfaces import evaluate_surface
from lit_dendrite.analysis.xor import analyse_inner_nets, analyse_layers
from lit_dendrite.models import InnerPretrain
from lit_dendrite.nn import DendriticCNN, DendriticMLP, count_parameters, native, tabulate_inner
from lit_dendrite.nn.celltypes import (
    CellTypeInnerNets,
    CellTypeNeuron,
    cell_type_blocks,
    cell_type_seed,
    cell_type_targets,
)
from lit_dendrite.nn.inner import smooth_random_function
from lit_dendrite.nn.neurons import inner_net_neurons


def test_unit_u_of_n_has_type_floor_u_k_over_n():
    for units, types in [(64, 10), (7, 3), (3, 5), (10, 10), (1, 1)]:
        blocks = cell_type_blocks(units, types)
        assert len(blocks) == types and blocks[0][0] == 0 and blocks[-1][1] == units
        for k, (start, stop) in enumerate(blocks):
            assert [u * types // units for u in range(start, stop)] == [k] * (stop - start)
    assert cell_type_blocks(64, 10)[:3] == [(0, 7), (7, 13), (13, 20)]


def test_each_unit_goes_through_its_types_inner_net():
    torch.manual_seed(0)
    inners = CellTypeInnerNets(3, arity=2, hidden=(16, 16))
    neuron = CellTypeNeuron(inners)
    x = torch.randn(4, 7, 2)
    out = neuron(x)
    assert out.shape == (4, 7)
    for unit in range(7):
        inner = inners.types[unit * 3 // 7]
        torch.testing.assert_close(out[:, unit], inner(x[:, unit]))
    torch.testing.assert_close(neuron(x.movedim(-1, 0), dim=0), out)  # units: the output's last dim either way


def test_fused_path_equals_plain_path_per_type():
    torch.manual_seed(0)
    inners = CellTypeInnerNets(4, arity=2, hidden=(64, 64))
    neuron = CellTypeNeuron(inners)
    z = torch.randn(50, 6, 6, 2 * 12, requires_grad=True)  # conv-like (N, H, W, C) maps: 12 units, 3 per type
    results = {}
    for impl in ("plain", "fused"):
        for inner in inners.types:
            inner.impl = impl
        inners.zero_grad()
        z.grad = None
        out = neuron.normalized(z, 3, pool=2)
        out.square().sum().backward()
        results[impl] = (out, z.grad, [p.grad.clone() for p in inners.parameters()])
    (out_plain, z_plain, p_plain), (out_fused, z_fused, p_fused) = results["plain"], results["fused"]
    torch.testing.assert_close(out_fused, out_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_fused, z_plain, atol=1e-5, rtol=1e-4)
    for fused, plain in zip(p_fused, p_plain):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)


def test_the_mlp_evaluates_all_types_of_a_layer_in_one_kernel_call(monkeypatch):
    """Each type's block (200 x 6-7 units: far below the fused path's threshold) would take the plain layers; the
    layer's blocks together take the native kernel once, with uneven blocks, and give the per-type plain values."""
    calls = []
    kernel = native.inner_forward

    def spy(rows, params, keep_signs=False, bf16=False, type_rows=None, library=None):
        calls.append(type_rows)
        return kernel(rows, params, keep_signs, bf16, type_rows, library)

    monkeypatch.setattr(native, "inner_forward", spy)
    torch.manual_seed(0)
    net = DendriticMLP(neuron="celltypes", dropout=0.0, widths=(64, 57, 64))
    x = torch.rand(200, *net.in_shape)
    results = {}
    for impl in ("plain", "auto"):
        for inner in net.inner.types:
            inner.impl = impl
        net.zero_grad()
        logits = net(x)
        logits.square().sum().backward()
        results[impl] = (logits, [p.grad.clone() for p in net.parameters()])
    assert [len(rows) for rows in calls] == [10, 10, 10] and sum(calls[1]) == 200 * 57
    assert calls[1][:4] == [200 * 6] * 3 + [200 * 5]  # units 0-5, 6-11, 12-17, 18-22, ... of 57
    torch.testing.assert_close(results["auto"][0], results["plain"][0], rtol=1e-5, atol=1e-5)
    for fused, plain in zip(results["auto"][1], results["plain"][1]):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))


def test_bad_number_of_types_is_a_clear_error():
    with pytest.raises(ValueError, match="neuron_args.types must be a positive integer"):
        CellTypeInnerNets(0)
    with pytest.raises(ValueError, match="a layer of 3 units cannot hold 4 cell types"):
        CellTypeNeuron(CellTypeInnerNets(4, hidden=(16, 16)))(torch.randn(2, 3, 2))


DIGITS = dict(in_shape=(1, 28, 28), mean=(0.3053,), std=(0.3247,))


@pytest.mark.parametrize("net", [DendriticMLP, DendriticCNN])
def test_one_cell_type_is_the_two_arg_net(net):
    torch.manual_seed(0)
    two_arg = net(**DIGITS, neuron="2arg").eval()
    torch.manual_seed(0)
    one_type = net(**DIGITS, neuron="celltypes", neuron_args={"types": 1}).eval()
    # the same parameters in the same order; only the inner net's key gains "types.0."
    one_type_parameters, two_arg_parameters = list(one_type.named_parameters()), list(two_arg.named_parameters())
    assert [k.replace("types.0.", "") for k, _ in one_type_parameters] == [k for k, _ in two_arg_parameters]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(one_type_parameters, two_arg_parameters))
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(one_type(x), two_arg(x))
    inputs, values = cell_type_targets(one_type.inner, seed=3)
    expected_inputs, expected_values = smooth_random_function(2, 3)
    assert torch.equal(inputs, expected_inputs) and torch.equal(values[:, 0], expected_values)


@pytest.mark.parametrize("net", [DendriticMLP, DendriticCNN])
def test_cell_type_nets_have_the_two_arg_nets_parameter_count(net):
    reference = count_parameters(net(**DIGITS, neuron="2arg"))
    model = net(**DIGITS, neuron="celltypes", match_neuron="2arg")
    assert len(model.inner) == 10 and abs(count_parameters(model) - reference) / reference <= 0.01, model.widths
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    neurons = inner_net_neurons(model)  # one learned neuron per layer and type, each on its type's inner net
    assert len(neurons) == 10 * len(model.widths)
    assert {id(n.inner) for n in neurons.values()} == {id(inner) for inner in model.inner.types}


@pytest.mark.parametrize("net", [DendriticMLP, DendriticCNN])
def test_gradients_reach_every_parameter_of_every_cell_type(net):
    model = net(**DIGITS, neuron="celltypes", neuron_args={"types": 3}, widths=(6, 6, 6, 6), dropout=0.0)
    model(torch.rand(4, 1, 28, 28)).square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_pretraining_fits_every_type_to_its_own_target():
    torch.manual_seed(0)
    inners = CellTypeInnerNets(3, hidden=(16, 16))
    inputs, values = cell_type_targets(inners, seed=5)
    assert values.shape == (101 * 101, 3) and inners(inputs).shape == values.shape
    assert len({cell_type_seed(5, k) for k in range(3)} | {cell_type_seed(6, k) for k in range(3)}) == 6
    assert not torch.allclose(values[:, 0], values[:, 1])
    module = InnerPretrain(inners, seed=5, target_of=cell_type_targets)
    batch = module.inputs[:256], module.targets[:256]
    with pytest.warns(UserWarning, match="log"):  # no Trainer to log to
        module.training_step(batch, 0).backward()
    for k, inner in enumerate(inners.types):  # session I's loss gives type k the gradient of its own fit (over K)
        own = [p.detach().clone().requires_grad_() for p in inner.parameters()]
        hidden = torch.relu(batch[0] @ own[0].t() + own[1])
        out = (torch.relu(hidden @ own[2].t() + own[3]) @ own[4].t() + own[5]).squeeze(-1)
        grads = torch.autograd.grad(torch.mean((out - batch[1][:, k]) ** 2) / 3, own)
        for parameter, expected in zip(inner.parameters(), grads):
            torch.testing.assert_close(parameter.grad, expected)


def test_tables_are_per_type_and_match_the_exact_types():
    torch.manual_seed(0)
    model = DendriticMLP(**DIGITS, neuron="celltypes", neuron_args={"types": 4}).eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        exact = model(x)
        reports = tabulate_inner(model, calibration=[x])
        tabulated = model(x)
    assert len(reports) == 4 * 3 and all(not p.requires_grad for p in model.inner.parameters())
    boxes = {tuple(r["low"]) for r in reports.values()}
    assert len(boxes) == len(reports)  # each layer and type calibrated on its own block's inputs
    torch.testing.assert_close(tabulated, exact, atol=2e-3, rtol=0)


def test_surfaces_are_analysed_per_cell_type():
    torch.manual_seed(0)
    net = DendriticMLP(**DIGITS, neuron="celltypes", neuron_args={"types": 2}, widths=(16, 16))
    images = (np.random.default_rng(0).random((64, 28, 28, 1)) * 255).astype(np.uint8)
    analyses = analyse_inner_nets(net, images)
    assert list(analyses) == ["inner.types.0", "inner.types.1"]
    for k, analysis in enumerate(analyses.values()):  # type k's surface, in the region of its own units' inputs
        assert list(analysis.layers) == [f"hidden.{layer}.neuron.types.{k}" for layer in range(2)]
        np.testing.assert_array_equal(analysis.pooled.surface.values, evaluate_surface(net.inner.types[k]).values)
    with pytest.raises(ValueError, match="2 inner nets"):
        analyse_layers(net, images)


def test_cell_type_run_freezes_every_type_in_session_three_reloads_and_reports_each_type(tmp_path):
    run_dir = tmp_path / "mlp_digits_celltypes"
    types = ["--model.net.init_args.neuron_args", '{"types": 3}']  # the config's 10 types cost 3x the time
    result = quick_train("mlp_digits_celltypes", run_dir, 4, 1, *types)
    assert result["status"] == "done" and result["test_acc"] > 0.5, result["test_acc"]
    assert set(result["epochs"]) == {"I_pretrain", "II_joint", "III_frozen"}
    joint_inner = torch.load(run_dir / "II_joint" / "inner_best.pt", weights_only=True)
    assert {key.split(".")[1] for key in joint_inner} == {"0", "1", "2"}
    frozen = torch.load(run_dir / "III_frozen" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    for key, value in joint_inner.items():  # every type kept bit-identical through session III
        assert torch.equal(frozen[f"net.inner.{key}"], value), key
    assert_reload_gives_the_tested_accuracy(run_dir, result)
    report = write_report(tmp_path, n_images=100).read_text()
    rows = [line for line in report.splitlines() if line.startswith("| mlp_digits_celltypes inner.types.")]
    assert len(rows) == 3 + 3 * 3, report  # a surface row per cell type, and per type and layer
    pooled = [line for line in report.splitlines() if line.startswith("| mlp_digits_celltypes all types |")]
    assert len(pooled) == 1 and pooled[0].split(" | ")[1].endswith("/3"), report  # the 3 types of the one run
