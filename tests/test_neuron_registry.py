"""The neuron registry is open: a neuron registered here (no other file edited) trains through the net and the
three-session protocol; the paper's neurons and their checkpoints are as before."""

import pytest
import torch
from helpers import quick_train
from torch import nn

from lit_dendrite.models import load_net
from lit_dendrite.models.protocol import inner_state_from_checkpoint
from lit_dendrite.nn import NEURONS, DendriticMLP, NeuronSpec, SharedNeuron, build_neuron, register_neuron
from lit_dendrite.nn.inner import InnerNet
from lit_dendrite.runs import RunDir


class ScaleModule(nn.Module):
    """A learned scale ``s``: the shared module of the test neuron ``s * tanh(x)``."""

    arity = 1

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(x.squeeze(-1))


class ScaledTanh(SharedNeuron):
    def __init__(self, shared: ScaleModule) -> None:
        super().__init__(shared, 1)

    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        self._check(x, dim)
        return self.inner(x.movedim(dim, -1))


def double_tanh(shared: nn.Module, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.linspace(-3, 3, 101).unsqueeze(-1)
    return inputs, 2 * torch.tanh(inputs.squeeze(-1))


@pytest.fixture
def scaled_tanh():
    spec = NeuronSpec(
        1,
        build=ScaledTanh,
        shared=lambda hidden, options: ScaleModule(options["scale"]),
        pretrain=double_tanh,
        freeze=True,
        options={"scale": 1.0},
    )
    register_neuron("scaled_tanh", spec)
    yield spec
    del NEURONS["scaled_tanh"]


def test_a_neuron_registered_outside_the_package_runs_every_session(tmp_path, scaled_tanh):
    run_dir = tmp_path / "run"
    neuron = ["--model.net.init_args.neuron", "scaled_tanh", "--model.net.init_args.neuron_args", "{scale: 0.5}"]
    result = quick_train("mlp_digits_relu", run_dir, 2, 3, *neuron, "--protocol.pretrain_lr", "0.05")
    assert set(result["epochs"]) == {"I_pretrain", "II_joint", "III_frozen"}
    assert result["status"] == "done" and result["test_acc"] > 0.2
    pretrained = torch.load(RunDir(run_dir).pretrained_inner, weights_only=True)["scale"]
    assert float(pretrained) == pytest.approx(2.0, abs=0.05)  # fitted from its option 0.5 to the target's 2
    best_joint = inner_state_from_checkpoint(run_dir / result["sessions"]["II_joint"]["best_checkpoint"])["scale"]
    frozen = torch.load(run_dir / "III_frozen" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(frozen["net.inner.scale"], best_joint)  # session III froze session II's best
    net = load_net(run_dir)
    assert isinstance(net.hidden[0].neuron, ScaledTanh) and net.hidden[0].neuron.inner is net.inner


def test_neuron_options_are_checked(scaled_tanh):
    assert DendriticMLP(neuron="scaled_tanh", neuron_args={"scale": 3.0}).inner.scale.item() == 3.0
    with pytest.raises(
        ValueError, match=r"neuron_args \['slope'\] are not options of this neuron \(it has \['scale'\]"
    ):
        DendriticMLP(neuron="scaled_tanh", neuron_args={"slope": 3.0})
    with pytest.raises(ValueError, match="not options of this neuron"):
        DendriticMLP(neuron="2arg", neuron_args={"scale": 3.0})
    with pytest.raises(ValueError, match="already registered"):
        register_neuron("scaled_tanh", scaled_tanh)


def test_unknown_neuron_names_list_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown neuron 'tanh'; choose one of \[.*'2arg'.*'relu'.*\]"):
        DendriticMLP(neuron="tanh")
    with pytest.raises(ValueError, match="unknown neuron 'tanh'"):
        DendriticMLP(neuron="relu", match_neuron="tanh")


@pytest.mark.parametrize(
    ("name", "arity", "sessions", "analysis"),
    [("1arg", 1, "I-II-III", "curve"), ("2arg", 2, "I-II-III", "surface"), ("3arg", 3, "I-II-III", None),
     ("relu", 1, "II", None), ("gelu", 1, "II", None), ("silu", 1, "II", None), ("product", 2, "II", None),
     ("swiglu", 2, "II", None)],
)  # fmt: skip
def test_the_paper_neurons_keep_their_meaning(name, arity, sessions, analysis):
    spec = NEURONS[name]
    shared = spec.shared_module((8,))
    assert spec.arity == arity and spec.analysis == analysis
    assert sessions == ("I-II-III" if spec.pretrain and spec.freeze else "II")
    assert spec.tables == spec.learned == isinstance(shared, InnerNet)
    if isinstance(shared, InnerNet):
        assert shared.arity == arity and shared.hidden == (8,)
    assert build_neuron(name, shared).arity == arity


OLD_STATE_SHAPES = {
    "inner.linears.0.weight": (5, 2), "inner.linears.0.bias": (5,), "inner.linears.1.weight": (1, 5),
    "inner.linears.1.bias": (1,), "normalize.mean": (1, 1, 1), "normalize.std": (1, 1, 1),
    "hidden.0.linear.weight": (6, 4), "hidden.0.linear.bias": (6,), "hidden.0.neuron.inner.linears.0.weight": (5, 2),
    "hidden.0.neuron.inner.linears.0.bias": (5,), "hidden.0.neuron.inner.linears.1.weight": (1, 5),
    "hidden.0.neuron.inner.linears.1.bias": (1,), "head.weight": (2, 3), "head.bias": (2,),
}  # fmt: skip
"""A 2-arg MLP's state dict as written before the registry was opened (keys and shapes)."""


def test_a_checkpoint_written_before_the_registry_still_loads(tmp_path):
    generator = torch.Generator().manual_seed(0)
    old = {key: torch.randn(shape, generator=generator) for key, shape in OLD_STATE_SHAPES.items()}
    for key in OLD_STATE_SHAPES:  # one shared inner net: every layer's copy holds the same tensors
        if ".neuron.inner." in key:
            old[key] = old[key[key.index("inner.") :]]
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in old.items()}}, path)
    net = DendriticMLP(in_shape=(1, 2, 2), num_classes=2, widths=(3,), inner_hidden=(5,), mean=(0.5,), std=(0.5,))
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == OLD_STATE_SHAPES
    net.load_state_dict(old)
    inner = inner_state_from_checkpoint(path)
    assert set(inner) == {k.removeprefix("inner.") for k in OLD_STATE_SHAPES if k.startswith("inner.")}
    assert torch.equal(net.inner.linears[0].weight, old["inner.linears.0.weight"])
    assert net.hidden[0].neuron.inner is net.inner
    assert net(torch.rand(2, 1, 2, 2)).shape == (2, 2)
