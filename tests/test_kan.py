"""The KAN neuron: its B-spline basis and layers against direct evaluations, and the kan nets under the protocol."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_reload_gives_the_tested_accuracy, quick_train
from scipy.interpolate import BSpline

from lit_dendrite.nn import DendriticCNN, DendriticMLP, count_parameters, match_width
from lit_dendrite.nn.kan import GRID_RANGE, KANConv, KANConv2d, KANDense, KANLinear, bspline_basis, spline_knots


@pytest.mark.parametrize(("grid", "order"), [(5, 3), (3, 1), (8, 2), (4, 0)])
def test_bspline_basis_matches_scipy(grid, order):
    knots = spline_knots(grid, order)
    # points off the knots (where a degree-0 element's value depends on which side is closed)
    x = torch.linspace(GRID_RANGE[0] - 0.5, GRID_RANGE[1] + 0.5, 41, dtype=torch.float64)[:-1] + 0.0123
    basis = bspline_basis(x, knots, order)
    assert basis.shape == (40, grid + order)
    for k in range(grid + order):
        element = BSpline.basis_element(knots[k : k + order + 2].numpy(), extrapolate=False)
        expected = np.nan_to_num(element(x.numpy()))  # NaN outside the element's support
        np.testing.assert_allclose(basis[:, k].numpy(), expected, atol=1e-12)
    inside = (x >= GRID_RANGE[0]) & (x < GRID_RANGE[1])
    torch.testing.assert_close(basis[inside].sum(-1), torch.ones(int(inside.sum()), dtype=torch.float64))


def test_kan_linear_is_a_sum_of_silu_and_spline_edges():
    torch.manual_seed(0)
    layer = KANLinear(4, 3, grid=5, order=3).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    knots = layer.features.knots.double().numpy()
    expected = np.zeros((6, 3))
    for j in range(3):
        for i in range(4):
            spline = BSpline(knots, layer.spline_weight[j, i].detach().numpy(), 3, extrapolate=False)
            edge = layer.base_weight[j, i].item() * F.silu(x[:, i]).numpy() + np.nan_to_num(spline(x[:, i].numpy()))
            expected[:, j] += edge
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-10)


def test_kan_convolution_is_the_kan_layer_on_every_patch():
    torch.manual_seed(0)
    conv = KANConv2d(3, 5, kernel_size=3, grid=4, order=2)
    dense = KANLinear(27, 5, grid=4, order=2)
    with torch.no_grad():  # the same edges: patch element (c, i, j) is input c * 9 + i * 3 + j of the dense layer
        dense.base_weight.copy_(conv.base_weight.flatten(1))
        dense.spline_weight.copy_(conv.spline_weight.permute(0, 1, 3, 4, 2).reshape(5, 27, 6))
    x = torch.randn(2, 3, 9, 8)
    patches = F.unfold(x, 3).transpose(1, 2)  # (N, positions, C * 3 * 3)
    expected = dense(patches).transpose(1, 2).reshape(2, 5, 7, 6)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_bad_grid_or_order_is_a_clear_error():
    with pytest.raises(ValueError, match="grid >= 1 and order >= 0"):
        KANLinear(3, 2, grid=0)


DIGITS = dict(in_shape=(1, 28, 28), mean=(0.3053,), std=(0.3247,))


@pytest.mark.parametrize("net", [DendriticMLP, DendriticCNN])
def test_kan_nets_have_the_two_arg_nets_parameter_count(net):
    reference = count_parameters(net(**DIGITS, neuron="2arg"))
    kan = net(**DIGITS, neuron="kan", match_neuron="2arg")
    assert abs(count_parameters(kan) - reference) / reference <= 0.01, kan.widths
    assert kan.inner is None and kan(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    layers = [m for m in kan.modules() if isinstance(m, KANDense | KANConv)]
    assert [layer.units for layer in layers] == list(kan.widths)
    assert all(layer.kan.features.grid == 5 and layer.kan.features.order == 3 for layer in layers)


def test_mnist_kan_mlp_is_matched_by_a_second_factor_after_the_first_layer():
    # one unit of the first KAN layer costs 784 * 9 parameters, 6% of the 2-arg net: no single factor matches
    widths = match_width(DendriticMLP, dict(neuron="kan", **DIGITS), reference=dict(neuron="2arg", widths=(64,) * 3))
    assert widths == [16, 25, 25]


@pytest.mark.parametrize("net", [DendriticMLP, DendriticCNN])
def test_gradients_reach_every_kan_parameter(net):
    model = net(**DIGITS, neuron="kan", match_neuron="2arg", neuron_args={"grid": 4, "order": 2}, dropout=0.0)
    model(torch.rand(4, 1, 28, 28)).square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.hidden[0].kan.spline_weight.shape[-1] == 6  # grid + order basis functions


def test_bad_kan_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"neuron_args.grid must be an integer >= 1, got 0"):
        DendriticMLP(**DIGITS, neuron="kan", neuron_args={"grid": 0})
    with pytest.raises(ValueError, match=r"neuron_args \['types'\] are not options"):
        DendriticMLP(**DIGITS, neuron="kan", neuron_args={"types": 3})


def test_kan_run_trains_session_two_only_beats_chance_and_reloads(tmp_path):
    run_dir = tmp_path / "mlp_digits_kan"
    result = quick_train("mlp_digits_kan", run_dir, 6, 2)
    assert result["status"] == "done" and result["test_acc"] > 0.5, result["test_acc"]
    assert list(result["epochs"]) == ["II_joint"]
    assert result["best_checkpoint"] == "II_joint/checkpoints/best.ckpt"
    assert_reload_gives_the_tested_accuracy(run_dir, result)
