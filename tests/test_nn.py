"""Facts about the model library that users rely on: shapes, parameter counts, shared inner net."""

import pytest
import torch

from lit_dendrite.nn import (
    NEURONS,
    DendriticCNN,
    DendriticConv2d,
    DendriticLinear,
    DendriticMLP,
    InnerNet,
    build_neuron,
    count_parameters,
    match_width,
)

MNIST = dict(in_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
CIFAR = dict(in_shape=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_inner_net_init_and_shape():
    inner = InnerNet(arity=2, hidden=(64, 64))
    assert [tuple(layer.weight.shape) for layer in inner.linears] == [(64, 2), (64, 64), (1, 64)]
    assert all(torch.all(layer.bias == 0) for layer in inner.linears)
    bound = (6 / (2 + 64)) ** 0.5
    assert inner.linears[0].weight.abs().max() <= bound
    assert inner(torch.randn(5, 7, 2)).shape == (5, 7)
    with pytest.raises(ValueError, match="arity=2"):
        inner(torch.randn(5, 3))


NEURON_MODULES = sorted(name for name, spec in NEURONS.items() if spec.build is not None)
"""The neurons that are one module per layer (kan brings its own layers: tests/test_kan.py)."""


@pytest.mark.parametrize("name", NEURON_MODULES)
def test_every_neuron_maps_groups_to_one_value(name):
    spec = NEURONS[name]
    neuron = build_neuron(name, spec.shared_module())
    x = torch.randn(4, 6, spec.arity, 12)  # 12 units: celltypes needs one per type (10)
    assert neuron(x, dim=2).shape == (4, 6, 12)
    assert neuron(x.movedim(2, -1)).shape == (4, 6, 12)
    torch.testing.assert_close(neuron(x, dim=2), neuron(x.movedim(2, -1)))


def test_fixed_two_argument_controls():
    x = torch.randn(10, 2)
    torch.testing.assert_close(build_neuron("product")(x), x[:, 0] * x[:, 1])
    torch.testing.assert_close(build_neuron("swiglu")(x), torch.nn.functional.silu(x[:, 0]) * x[:, 1])


def test_unknown_neuron_and_wrong_arity_are_clear_errors():
    with pytest.raises(ValueError, match="unknown neuron 'tanh'"):
        build_neuron("tanh")
    with pytest.raises(ValueError, match="arity 2"):
        build_neuron("2arg", InnerNet(arity=1))


@pytest.mark.parametrize("name", NEURON_MODULES)
def test_dendritic_layers_shapes(name):
    spec = NEURONS[name]
    neuron = build_neuron(name, spec.shared_module())
    dense = DendriticLinear(20, 12, neuron, dropout=0.5)
    assert dense.linear.out_features == 12 * spec.arity
    assert dense(torch.randn(3, 20)).shape == (3, 12)
    conv = DendriticConv2d(3, 10, neuron, dropout=0.5, kernel_size=3, pool=2)
    assert conv.conv.out_channels == 10 * spec.arity
    assert conv(torch.randn(2, 3, 12, 12)).shape == (2, 10, 5, 5)


def test_conv_groups_adjacent_channels():
    neuron = build_neuron("product")
    layer = DendriticConv2d(1, 2, neuron, kernel_size=1)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1))
        layer.conv.bias.zero_()
    x = torch.randn(1, 1, 3, 3)
    z = torch.nn.functional.layer_norm(layer.conv(x), (4, 3, 3))
    torch.testing.assert_close(layer(x), torch.stack([z[:, 0] * z[:, 1], z[:, 2] * z[:, 3]], dim=1))


def test_paper_parameter_counts():
    assert count_parameters(DendriticMLP(**MNIST, widths=(64, 64, 64), neuron="2arg")) == 122_187
    assert count_parameters(DendriticCNN(**CIFAR, widths=(60, 120, 120, 120), neuron="2arg")) == 513_707


@pytest.mark.parametrize("net", [DendriticMLP, DendriticCNN])
def test_one_inner_net_shared_by_every_layer(net):
    model = net(**CIFAR, neuron="2arg")
    inners = {id(m.inner) for m in model.modules() if hasattr(m, "inner") and m is not model}
    assert inners == {id(model.inner)}
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("net", [DendriticMLP, DendriticCNN])
def test_gradients_reach_the_inner_net_from_every_layer(net):
    model = net(**CIFAR, neuron="2arg", dropout=0.0)
    layers = [m for m in model.modules() if isinstance(m, DendriticLinear | DendriticConv2d)]
    assert len(layers) >= 3
    for layer in layers:
        captured = {}
        handle = layer.neuron.register_forward_hook(lambda mod, inp, out: captured.setdefault("out", out))
        model.zero_grad()
        model(torch.rand(2, 3, 32, 32))
        handle.remove()
        captured["out"].sum().backward()
        grad = model.inner.linears[0].weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient from {layer}"


def test_match_width_within_one_percent():
    reference = count_parameters(DendriticCNN(**MNIST, neuron="2arg"))
    for neuron in ("1arg", "relu", "product", "swiglu"):
        net = DendriticCNN(**MNIST, neuron=neuron, match_neuron="2arg")
        assert abs(count_parameters(net) - reference) / reference <= 0.01, (neuron, net.widths)
    widths = match_width(DendriticMLP, dict(neuron="relu", **MNIST), reference=dict(neuron="2arg", widths=(64,) * 3))
    assert widths == [118, 118, 118]


def test_wrong_input_shape_names_the_problem():
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 1, 28, 28\)"):
        DendriticMLP(**MNIST)(torch.rand(2, 3, 32, 32))


def test_the_nets_are_plain_torch_and_default_to_their_data_sets_table():
    import subprocess
    import sys

    from lit_dendrite.data import DATASETS

    # a notebook or benchmark that builds nets does not pay for Lightning's import
    code = "import sys, lit_dendrite.nn; print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning'))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
    for net, dataset in ((DendriticMLP(), "mnist"), (DendriticCNN(), "cifar10")):
        spec = DATASETS[dataset]
        assert net.in_shape == spec.in_shape and net.num_classes == spec.num_classes
        assert net.normalize.mean.flatten().tolist() == pytest.approx(spec.mean)
        assert net.normalize.std.flatten().tolist() == pytest.approx(spec.std)
