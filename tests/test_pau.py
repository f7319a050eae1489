"""The ``pau`` neuron (safe Padé Activation Unit, Molina et al. 2020): formula, ReLU initialisation, gradients,
parameter matching, the protocol on digits, reload, and its curve analysis."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import digits_test_set, quick_train

from lit_dendrite.analysis.activations import analyse_curve, evaluate_curve
from lit_dendrite.analysis.nonlinearity_report import ACTIVATIONS_FIGURE
from lit_dendrite.analysis.report import write_report
from lit_dendrite.data import load_arrays
from lit_dendrite.models import load_net
from lit_dendrite.models.protocol import inner_state_from_checkpoint
from lit_dendrite.nn import DendriticCNN, DendriticMLP, PadeActivation, build_neuron, count_parameters
from lit_dendrite.nn.pau import RELU_DENOMINATOR, RELU_NUMERATOR, SafePade

MNIST = dict(in_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
CIFAR = dict(in_shape=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def safe_pade_by_autograd(x, a, b):
    """The paper's formula written out, differentiated by autograd: the reference for :class:`SafePade`."""
    p = sum(a[j] * x**j for j in range(len(a)))
    q = sum(b[k - 1] * x**k for k in range(1, len(b) + 1))
    return p / (1 + q.abs())


def test_safe_pade_matches_the_formula_and_its_gradients(monkeypatch):
    monkeypatch.setattr("lit_dendrite.nn.pau.BACKWARD_CHUNK", 64)  # several chunks
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(20, 15, generator=generator, dtype=torch.float64) * 2).t().requires_grad_()  # not contiguous
    a = torch.randn(6, generator=generator, dtype=torch.float64).requires_grad_()
    b = torch.randn(4, generator=generator, dtype=torch.float64).requires_grad_()
    torch.testing.assert_close(SafePade.apply(x, a, b), safe_pade_by_autograd(x, a, b))
    assert torch.autograd.gradcheck(SafePade.apply, (x, a, b))
    weights = torch.randn(15, 20, generator=generator, dtype=torch.float64)
    ours = torch.autograd.grad((SafePade.apply(x, a, b) * weights).sum(), (x, a, b))
    reference = torch.autograd.grad((safe_pade_by_autograd(x, a, b) * weights).sum(), (x, a, b))
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs)


def test_initial_coefficients_are_the_least_squares_fit_to_relu():
    x = torch.linspace(-3, 3, 1201, dtype=torch.float64)
    a = torch.tensor(RELU_NUMERATOR, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(RELU_DENOMINATOR, dtype=torch.float64, requires_grad=True)
    error = safe_pade_by_autograd(x, a, b) - torch.relu(x)
    mse = (error**2).mean()
    assert float(mse) == pytest.approx(3.14e-5, rel=0.01) and float(error.abs().max()) < 0.035
    gradient = torch.cat(torch.autograd.grad(mse, (a, b)))
    assert float(gradient.abs().max()) < 1e-6, gradient  # a stationary point of the fit: nothing left to gain
    with torch.no_grad():  # the module starts there (in float32)
        torch.testing.assert_close(PadeActivation()(x.float()), torch.relu(x.float()), atol=0.035, rtol=0)


def test_pau_neuron_shapes_and_one_shared_set_of_coefficients():
    net = DendriticMLP(neuron="pau", widths=(8, 8), **MNIST)
    assert isinstance(net.inner, PadeActivation) and count_parameters(net.inner) == 10
    assert all(layer.neuron.inner is net.inner for layer in net.hidden)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    neuron = build_neuron("pau", net.inner)
    assert neuron(torch.randn(4, 5, 1)).shape == (4, 5)
    cnn = DendriticCNN(neuron="pau", **CIFAR)
    assert cnn(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("net", "shape"), [(DendriticMLP, MNIST), (DendriticMLP, CIFAR), (DendriticCNN, MNIST), (DendriticCNN, CIFAR)]
)
def test_pau_nets_match_the_two_arg_parameter_count_within_one_percent(net, shape):
    target = count_parameters(net(neuron="2arg", **shape))
    matched = count_parameters(net(neuron="pau", match_neuron="2arg", **shape))
    assert abs(matched - target) / target < 0.01, (matched, target)


def test_gradients_reach_every_learned_parameter_of_a_pau_net():
    torch.manual_seed(0)
    net = DendriticCNN(neuron="pau", widths=(6, 8, 10), kernels=(3, 3), **MNIST)
    loss = torch.nn.functional.cross_entropy(net(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name
    assert {"inner.numerator", "inner.denominator"} <= {name for name, _ in net.named_parameters()}


@pytest.fixture(scope="module")
def pau_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sweep") / "mlp_digits_pau" / "seed=0"
    return run_dir, quick_train("mlp_digits_pau", run_dir, 3, 0)


def test_pau_run_learns_on_digits_and_freezes_its_unit_in_session_three(pau_run):
    run_dir, result = pau_run
    assert result["status"] == "done" and result["test_acc"] > 0.5, result["test_acc"]
    assert set(result["epochs"]) == {"II_joint", "III_frozen"}  # no session I: it starts at its ReLU fit
    joint = inner_state_from_checkpoint(run_dir / result["sessions"]["II_joint"]["best_checkpoint"])
    assert not torch.allclose(joint["numerator"], torch.tensor(RELU_NUMERATOR))  # trained in session II
    frozen = torch.load(run_dir / result["best_checkpoint"], weights_only=True)["state_dict"]
    for key, value in joint.items():
        assert torch.equal(frozen[f"net.inner.{key}"], value), key
    recorded = json.loads((run_dir / "result.json").read_text())
    assert recorded["neuron"] == "pau" and recorded["num_params"] == pytest.approx(122_187, rel=0.01)


def test_a_reloaded_pau_net_gives_the_tested_predictions(pau_run):
    run_dir, result = pau_run
    net = load_net(run_dir)
    x, labels = digits_test_set()
    with torch.no_grad():
        predictions = net(x).argmax(1)
        assert torch.equal(load_net(run_dir)(x).argmax(1), predictions)
    accuracy = (predictions == labels).float().mean().item()
    assert accuracy == pytest.approx(result["test_acc"], abs=1e-6)


def test_the_curve_of_a_pau_net(pau_run):
    run_dir, _ = pau_run
    untrained = DendriticMLP(neuron="pau", widths=(8,), **MNIST)
    x = np.linspace(-3, 3, 61)
    np.testing.assert_allclose(evaluate_curve(untrained, x), np.maximum(x, 0), atol=0.035)
    images = load_arrays("digits", "unused", train=False)[0][:50]
    analysis = analyse_curve(load_net(run_dir), images)
    low, high = analysis.interval
    assert -5 < low < 0 < high < 5 and analysis.values.shape == analysis.x.shape
    assert analysis.relu_rms > 0
    with pytest.raises(ValueError, match="no learned one-argument activation"):
        evaluate_curve(DendriticMLP(neuron="relu", **MNIST))


def test_the_report_shows_the_learned_curve_of_a_pau_run(pau_run):
    run_dir, _ = pau_run
    sweep = run_dir.parents[1]
    report = write_report(sweep, n_images=50).read_text()
    assert "## Learned one-argument activations" in report
    assert re.search(r"\| mlp_digits_pau \| 1 \| -\d\.\d\d \| \d\.\d\d \| 0\.\d{3} \|", report), report
    assert (sweep / ACTIVATIONS_FIGURE).stat().st_size > 0
