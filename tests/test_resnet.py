"""The dendritic CIFAR ResNet-18: shapes, parameter counts and matching, gradients, the residual sum per
pre-activation, frozen tables, checkpoints and short runs through the protocol."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_reload_gives_the_tested_accuracy, quick_train

from lit_dendrite.models.loading import build_net
from lit_dendrite.nn import DendriticResNet, count_parameters, exact_inner, tabulate_inner
from lit_dendrite.nn.neurons import LearnedNeuron, learned_neurons

DIGITS = dict(in_shape=(1, 28, 28), mean=(0.3053,), std=(0.3247,))
CIFAR100 = dict(in_shape=(3, 32, 32), num_classes=100)
TINY = dict(width_multiplier=1 / 16)  # stage widths 4, 8, 16, 32


@pytest.mark.parametrize("neuron", ["2arg", "1arg", "relu"])
@pytest.mark.parametrize("data", [DIGITS, CIFAR100], ids=["digits", "cifar100"])
def test_shapes_on_cifar_and_digits_input(neuron, data):
    net = DendriticResNet(**data, **TINY, neuron=neuron)
    x = torch.rand(3, *net.in_shape)
    assert net(x).shape == (3, net.num_classes)
    assert net.widths == (4, 8, 16, 32)
    assert [block.first.conv.stride[0] for block in net.stages] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert net.stem.conv.out_channels == net.stem.arity * 4 and net.head.in_features == 32
    assert len(learned_neurons(net)) == (17 if neuron != "relu" else 0)  # stem + 2 per BasicBlock


def test_full_size_parameter_counts():
    with torch.device("meta"):
        relu = DendriticResNet(neuron="relu")
        two_arg = DendriticResNet(neuron="2arg")
    assert count_parameters(relu) == 11_173_962  # the CIFAR ResNet-18 (LayerNorm has no parameters)
    assert count_parameters(two_arg) == 22_173_387


@pytest.mark.parametrize("multiplier", [1.0, 1 / 8])
@pytest.mark.parametrize("control", ["1arg", "relu"])
def test_controls_match_the_two_arg_net_within_one_percent(multiplier, control):
    with torch.device("meta"):
        reference = count_parameters(DendriticResNet(width_multiplier=multiplier))
        matched = DendriticResNet(width_multiplier=multiplier, neuron=control, match_neuron="2arg")
    assert abs(count_parameters(matched) - reference) / reference <= 0.01
    assert matched.widths[0] > round(64 * multiplier)  # wider, since 2-arg units have two pre-activations each


@pytest.mark.parametrize("neuron", ["2arg", "1arg", "relu"])
def test_gradients_reach_every_parameter(neuron):
    torch.manual_seed(0)
    net = DendriticResNet(**DIGITS, **TINY, neuron=neuron).train()
    # odd batch sizes: torch's strided 1x1 conv on channels-last maps crashed on them (see resnet.Projection)
    for batch in (5, 3):
        net.zero_grad()
        F.cross_entropy(net(torch.rand(batch, 1, 28, 28)), torch.arange(batch) % 10).backward()
        missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing
    if neuron != "relu":
        assert all(p.grad is not None for p in net.inner.parameters())


def test_residual_is_added_to_each_pre_activation_of_a_unit():
    torch.manual_seed(0)
    net = DendriticResNet(**DIGITS, **TINY).eval()
    block = net.stages[2]  # the first block of stage 2: a projection shortcut
    torch.nn.init.zeros_(block.second.conv.weight)
    seen = []
    block.second.neuron.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    net(torch.rand(2, 1, 28, 28))
    pairs = seen[0]
    assert pairs.shape[-1] == 2 and pairs.shape[-2] == 8  # (N, H, W, units, arity)
    torch.testing.assert_close(pairs[..., 0], pairs[..., 1])  # conv2 gives 0: both see the residual alone
    assert pairs.std() > 0.5


def test_frozen_tables_approximate_the_exact_net_and_train_the_outer_net():
    torch.manual_seed(0)
    net = DendriticResNet(**DIGITS, **TINY)
    x = torch.rand(16, 1, 28, 28)
    net.inner.requires_grad_(False)
    reports = tabulate_inner(net, calibration=[x])
    assert len(reports) == 17
    net.eval()
    with torch.no_grad():
        tabulated = net(x)
        with exact_inner(net):
            exact = net(x)
    torch.testing.assert_close(tabulated, exact, atol=2e-3, rtol=0)
    net.train()
    F.cross_entropy(net(x), torch.arange(16) % 10).backward()
    assert all(n.table is not None for n in learned_neurons(net).values())
    assert net.stem.conv.weight.grad.abs().sum() > 0 and net.inner.linears[0].weight.grad is None


def test_residual_bn_init_zero_starts_every_block_as_its_shortcut():
    torch.manual_seed(0)
    default = DendriticResNet(**DIGITS, **TINY)
    assert all(torch.all(block.second.bn.weight == 1) for block in default.stages)
    net = DendriticResNet(**DIGITS, **TINY, residual_bn_init=0.0).eval()
    seen = []
    for block in net.stages:
        block.second.neuron.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    net(torch.rand(2, 1, 28, 28))
    assert len(seen) == len(net.stages)
    for pairs in seen:  # conv2's branch gives 0: both dendrites of every unit see the residual alone
        torch.testing.assert_close(pairs[..., 0], pairs[..., 1])


def test_checkpoint_reload_gives_the_same_predictions(tmp_path):
    torch.manual_seed(0)
    config = {"class_path": "lit_dendrite.nn.DendriticResNet", "init_args": {**DIGITS, **TINY, "neuron": "2arg"}}
    net = build_net(config)
    F.cross_entropy(net(torch.rand(8, 1, 28, 28)), torch.arange(8)).backward()  # moves BatchNorm's running stats
    torch.save(net.state_dict(), tmp_path / "net.pt")
    torch.manual_seed(1)
    reloaded = build_net(config)
    reloaded.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), reloaded.eval()(x))
    assert isinstance(reloaded.stem.neuron, LearnedNeuron)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="width_multiplier"):
        DendriticResNet(width_multiplier=0)
    with pytest.raises(ValueError, match="one value per stage"):
        DendriticResNet(widths=(8, 16), blocks=(2, 2, 2))
    with pytest.raises(ValueError, match="blocks"):
        DendriticResNet(blocks=(2, 0, 2, 2))
    with pytest.raises(ValueError, match="residual_bn_init must be a finite number or null"):
        DendriticResNet(residual_bn_init=float("nan"))


def test_short_relu_run_learns_and_reloads_with_its_tested_accuracy(tmp_path):
    result = quick_train("resnet18_digits_relu", tmp_path / "run", 1, 0, "--data.batch_size", "50")
    assert result["status"] == "done" and result["test_acc"] > 0.3, result["test_acc"]
    assert_reload_gives_the_tested_accuracy(tmp_path / "run", result)


def test_two_arg_run_goes_through_every_session_with_augmentation(tmp_path):
    limits = [f"--trainer.limit_{stage}_batches" for stage in ("train", "val", "test")]
    limits = [arg for limit in limits for arg in (limit, "2")] + ["--data.batch_size", "16"]
    result = quick_train("resnet18_digits_2arg", tmp_path / "run", 1, 1, *limits, "--data.augment", "cifar")
    assert result["status"] == "done" and set(result["epochs"]) == {"I_pretrain", "II_joint", "III_frozen"}
    for session in ("II_joint", "III_frozen"):  # 2 batches of 16, not the whole epoch
        checkpoint = torch.load(tmp_path / "run" / session / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 2


@pytest.mark.slow
def test_short_two_arg_run_learns(tmp_path):
    result = quick_train("resnet18_digits_2arg", tmp_path / "run", 1, 2, "--data.batch_size", "50")
    assert result["test_acc"] > 0.3 and result["sessions"]["II_joint"]["test_acc"] > 0.3, result["sessions"]


def test_post_neuron_bn_gives_unit_scale_blocks_and_is_absent_by_default():
    torch.manual_seed(0)
    default = DendriticResNet(**DIGITS, **TINY)
    assert not any("post_bn" in key for key in default.state_dict())  # recorded checkpoints still load
    net = DendriticResNet(**DIGITS, **TINY, post_neuron_bn=True).train()
    outputs = []
    for block in net.stages:
        block.register_forward_hook(lambda module, args, out: outputs.append(out))
    net(torch.rand(8, 1, 28, 28))
    for out in outputs:  # BatchNorm's batch statistics: each unit's output standardised
        torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(out.shape[1]), atol=1e-2, rtol=0)


def test_pre_activation_layout_is_the_identity_mapping_block_and_absent_by_default():
    torch.manual_seed(0)
    default = DendriticResNet(**DIGITS, **TINY)
    assert default.block_layout == "post" and not any(key.startswith("final.") for key in default.state_dict())
    net = DendriticResNet(**DIGITS, **TINY, block_layout="pre").train()
    block = net.stages[0]  # identity shortcut: the stream of 2 pre-activations per unit plus the branch
    assert isinstance(block.shortcut, torch.nn.Identity) and block.conv2.out_channels == 2 * 4
    stream = torch.randn(3, 8, 28, 28)
    torch.testing.assert_close(block(stream), stream + block.conv2(block.second(block.conv1(block.first(stream)))))
    x = torch.rand(4, 1, 28, 28)
    assert net(x).shape == (4, 10)
    assert len(learned_neurons(net)) == 17  # two per block and the last one before the pooling
    with pytest.raises(ValueError, match="block_layout must be one of"):
        DendriticResNet(block_layout="middle")


@pytest.mark.parametrize("control", ["1arg", "relu"])
def test_pre_activation_controls_match_the_two_arg_net_within_one_percent(control):
    reference = count_parameters(DendriticResNet(**DIGITS, width_multiplier=1 / 8, block_layout="pre"))
    net = DendriticResNet(**DIGITS, width_multiplier=1 / 8, block_layout="pre", neuron=control, match_neuron="2arg")
    assert abs(count_parameters(net) - reference) <= 0.01 * reference


def test_pre_activation_residual_init_zero_starts_every_block_as_its_shortcut():
    torch.manual_seed(0)
    net = DendriticResNet(**DIGITS, **TINY, block_layout="pre", residual_bn_init=0.0).train()
    for block in net.stages:
        assert torch.all(block.conv2.weight == 0)
    block = net.stages[0]
    stream = torch.randn(3, 8, 28, 28)
    torch.testing.assert_close(block(stream), stream)


def test_pre_activation_tables_approximate_the_exact_net():
    torch.manual_seed(0)
    net = DendriticResNet(**DIGITS, **TINY, block_layout="pre")
    x = torch.rand(16, 1, 28, 28)
    F.cross_entropy(net(x), torch.arange(16) % 10).backward()  # moves BatchNorm's running stats
    tabulate_inner(net, calibration=[x])
    net.eval()
    with torch.no_grad():
        tabulated = net(x)
        with exact_inner(net):
            exact = net(x)
    torch.testing.assert_close(tabulated, exact, atol=2e-3 * exact.abs().max().item(), rtol=0)
