"""The variance-preserving neuron (``neuron_args.standardize``): a gain and offset fixed when session I ends, applied
by every evaluation path (plain, lean, fused, the fused LayerNorm path, frozen tables), kept through sessions II and
III and checkpoints."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_reload_gives_the_tested_accuracy, quick_train

from lit_dendrite.errors import ConfigError
from lit_dendrite.models import load_net
from lit_dendrite.nn import DendriticCNN, DendriticMLP, InnerNet, exact_inner, tabulate_inner
from lit_dendrite.nn.inner_kernels import plain_inner
from lit_dendrite.nn.neurons import LAYER_NORM_EPS, LearnedNeuron
from lit_dendrite.runs import RunDir

STANDARDIZE = ["--model.net.init_args.neuron_args", "{standardize: true}"]


def standard_normals(arity: int, seed: int = 123, n: int = 100_000) -> torch.Tensor:
    return torch.randn(n, arity, generator=torch.Generator().manual_seed(seed))


def standardized_inner(arity: int = 2) -> InnerNet:
    torch.manual_seed(0)
    inner = InnerNet(arity, standardize=True)
    inner.standardize_output()
    return inner


@pytest.mark.parametrize("arity", [1, 2, 3])
def test_the_output_has_zero_mean_and_unit_variance_over_standard_normal_inputs(arity):
    torch.manual_seed(0)
    inner = InnerNet(arity, standardize=True)
    with torch.no_grad():
        before = inner(standard_normals(arity))
    assert abs(float(before.std()) - 1) > 0.1  # Xavier's init is not standardised by chance
    inner.standardize_output()
    with torch.no_grad():
        after = inner(standard_normals(arity))  # other samples than the ones that fixed the affine
    assert abs(float(after.mean())) < 0.02 and abs(float(after.std()) - 1) < 0.02
    gain, offset = inner.output_gain.clone(), inner.output_offset.clone()
    inner.standardize_output()  # a fixed generator: the same weights give the same affine
    assert torch.equal(inner.output_gain, gain) and torch.equal(inner.output_offset, offset)


def test_without_the_option_the_inner_net_keeps_the_papers_state_and_values():
    torch.manual_seed(0)
    inner = InnerNet(2)
    assert all(key.startswith("linears.") for key in inner.state_dict())  # recorded checkpoints still load
    x = standard_normals(2, n=100)
    before = inner(x)
    inner.standardize_output()
    assert torch.equal(inner(x), before)
    with pytest.raises(ValueError, match="standardize"):
        InnerNet(2, standardize="yes")


@pytest.mark.parametrize("impl", ["plain", "lean", "fused"])
def test_every_implementation_applies_the_affine(impl):
    inner = standardized_inner()
    inner.impl = impl
    x = torch.randn(7, 3, 2)
    reference = plain_inner(x, inner.linears) * inner.output_gain + inner.output_offset
    torch.testing.assert_close(inner(x), reference)
    neuron = LearnedNeuron(inner)  # the fused path takes LayerNorm into its op
    z = torch.randn(5, 6, 8)
    expected = inner.output_affine(
        plain_inner(F.layer_norm(z, (8,), eps=LAYER_NORM_EPS).unflatten(-1, (4, 2)), inner.linears)
    )
    torch.testing.assert_close(neuron.normalized(z, 1), expected)


@pytest.mark.parametrize("build", [DendriticMLP, DendriticCNN])
def test_frozen_tables_tabulate_the_standardized_function(build):
    torch.manual_seed(0)
    net = build(dropout=0.0, neuron_args={"standardize": True}).eval()
    net.inner.standardize_output()
    images = torch.rand(8, *net.in_shape, generator=torch.Generator().manual_seed(1))
    tabulate_inner(net, calibration=[torch.rand(8, *net.in_shape, generator=torch.Generator().manual_seed(0))])
    with torch.no_grad():
        tabulated = net(images)
        with exact_inner(net):
            exact = net(images)
            net.inner.output_gain.fill_(1.0)  # the MLP alone gives other logits: the affine matters here
            net.inner.output_offset.fill_(0.0)
            raw = net(images)
    assert (tabulated - exact).abs().max() < 1e-2 * exact.abs().max()
    assert (raw - exact).abs().max() > 0.1 * exact.abs().max()


@pytest.mark.parametrize("neuron", ["2arg", "1arg"])
def test_session_one_fixes_the_affine_and_sessions_two_and_three_keep_it(tmp_path, neuron):
    run_dir = tmp_path / "run"
    result = quick_train(f"mlp_digits_{neuron}", run_dir, 1, 2, *STANDARDIZE)
    assert result["status"] == "done"
    pretrained = torch.load(RunDir(run_dir).pretrained_inner, weights_only=True)
    inner = InnerNet(pretrained["linears.0.weight"].shape[1], standardize=True)
    inner.load_state_dict(pretrained)
    with torch.no_grad():
        out = inner(standard_normals(inner.arity))
    assert abs(float(out.mean())) < 0.02 and abs(float(out.std()) - 1) < 0.02
    assert float(pretrained["output_gain"]) != 1.0
    joint = torch.load(RunDir(run_dir).best_inner, weights_only=True)
    assert not torch.equal(joint["linears.0.weight"], pretrained["linears.0.weight"])  # session II trained the MLP
    for key in ("output_gain", "output_offset"):  # but never the affine
        assert torch.equal(joint[key], pretrained[key])
        frozen = torch.load(run_dir / "III_frozen" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
        assert torch.equal(frozen[f"net.inner.{key}"], pretrained[key])
        assert torch.equal(getattr(load_net(run_dir).inner, key), pretrained[key])
    assert_reload_gives_the_tested_accuracy(run_dir, result)


@pytest.mark.parametrize("neuron", ["celltypes", "pau", "kan"])
def test_neurons_without_an_inner_net_refuse_the_option(neuron):
    with pytest.raises(ConfigError, match="standardize"):
        DendriticMLP(neuron=neuron, neuron_args={"standardize": True})


def test_a_run_without_session_one_standardizes_session_two_fresh_inner_net(tmp_path):
    run_dir = tmp_path / "run"
    result = quick_train("mlp_digits_2arg", run_dir, 1, 2, *STANDARDIZE, "--protocol.sessions", "[II_joint]")
    assert result["status"] == "done" and not RunDir(run_dir).pretrained_inner.exists()
    assert float(torch.load(RunDir(run_dir).best_inner, weights_only=True)["output_gain"]) != 1.0
