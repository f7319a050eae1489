"""The ResNet diagnosis's measurements on nets whose answers are known."""

import json
import math

import pytest
import torch
from torch import nn

from lit_dendrite.analysis.resnet_diagnosis import block_statistics, growth_per_block, inner_shape
from lit_dendrite.nn import DendriticResNet


class Sine(nn.Module):
    """sin(4 x) of one argument: zeros at 0 and +-pi/4 inside [-1.5, 1.5], slope 4 at 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(4 * x[..., 0])


class Relu1(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x[..., 0])


def test_inner_shape_counts_sign_changes_and_the_slope_at_zero():
    shape = inner_shape(Sine(), 1)
    assert shape["sign_changes"] == 3
    assert shape["slope_at_0"] == pytest.approx(4.0, rel=1e-5)
    assert shape["out_mean"] == pytest.approx(0.0, abs=0.02)  # odd function of a symmetric input


def test_block_statistics_of_a_resnet_name_every_stage_with_its_gradient():
    torch.manual_seed(0)
    net = DendriticResNet(in_shape=(1, 28, 28), mean=(0.3,), std=(0.3,), width_multiplier=1 / 16, neuron="relu")
    rows = block_statistics(net, torch.rand(6, 1, 28, 28), torch.arange(6))
    assert [row["stage"] for row in rows] == ["stem", *(f"block {i}" for i in range(1, 9))]
    assert all(math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0 for row in rows)
    assert all(row["branch_std"] > 0 and row["residual_std"] > 0 for row in rows[1:])
    assert growth_per_block([{"grad_norm": 100.0}, {"grad_norm": 10.0}, {"grad_norm": 1.0}]) == pytest.approx(10.0)
    assert net.stem.conv.weight.grad is None  # measured on the net given, which is left without gradients


def test_block_statistics_of_the_pre_activation_layout_measure_the_branch_at_its_last_conv():
    torch.manual_seed(0)
    net = DendriticResNet(
        in_shape=(1, 28, 28), mean=(0.3,), std=(0.3,), width_multiplier=1 / 16, block_layout="pre", residual_bn_init=0
    )
    rows = block_statistics(net, torch.rand(6, 1, 28, 28), torch.arange(6))
    assert all(row["branch_std"] == 0 and row["residual_std"] > 0 for row in rows[1:])  # every branch starts at 0
    assert all(math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0 for row in rows)


def test_the_script_measures_session_two_start_and_first_epoch_of_a_config(tmp_path):
    from helpers import REPO

    from lit_dendrite.analysis.resnet_diagnosis import diagnose_run

    config = REPO / "configs" / "experiment" / "resnet18_digits_relu.yaml"
    tiny = ["--model.net.init_args.width_multiplier", "0.0625", "--trainer.limit_train_batches", "2"]
    row = diagnose_run(config, 3, tmp_path / "run", 0, 1, tiny)
    assert row["seed"] == 3 and len(row["start"]["blocks"]) == 9 and "inner" not in row["start"]  # ReLU: none
    assert len(row["train_loss"]) == 1 and len(row["val_acc"]) == 1 and row["test_acc"] is not None


def test_the_start_only_measurement_trains_session_one_whole(tmp_path):
    """Epochs 0 stops session II after its first batch; session I must still run every step of its epochs."""
    from helpers import REPO

    from lit_dendrite.analysis.resnet_diagnosis import diagnose_run

    config = REPO / "configs" / "experiment" / "resnet18_digits_2arg.yaml"
    row = diagnose_run(config, 1, tmp_path / "run", 1, 0, ["--model.net.init_args.width_multiplier", "0.0625"])
    session_one = json.loads((tmp_path / "run" / "I_pretrain" / "session.json").read_text())
    assert session_one["steps"] == 40 and "inner" in row["start"]  # 101 x 101 grid points / 256 a batch
    assert json.loads((tmp_path / "run" / "II_joint" / "session.json").read_text())["epochs"] <= 1


def test_relu_has_the_backward_gain_the_docstring_gives():
    shape = inner_shape(Relu1(), 1)
    assert shape["backward_gain"] == pytest.approx(0.5**0.5 / (0.5 - 0.5 / math.pi) ** 0.5, rel=0.03)
