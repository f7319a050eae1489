"""Configs that say only what differs (issue 31): an experiment config extends its net x data set config, which
extends the shared defaults; any registered neuron runs on any net and data set from the command line or a sweep
axis; and no recorded run changes identity (every experiment and every sweep run resolves to the configuration
hash it had before the configs were composed)."""

import json
from functools import cache
from pathlib import Path

import pytest
import yaml
from helpers import CONFIGS, quick_train

from lit_dendrite.cli import build, experiment_name, parse, resolve
from lit_dendrite.config_files import ConfigFileError, composed_config, config_chain
from lit_dendrite.data.datasets import DATASETS, DatasetSpec, IdxFiles, register_dataset
from lit_dendrite.nn import DendriticCNN, DendriticMLP, count_parameters
from lit_dendrite.nn.matching import PAPER_CONTROL_WIDTHS, settled_widths
from lit_dendrite.nn.neurons import NEURONS
from lit_dendrite.runs import config_hash
from lit_dendrite.sweeps.launch import snapshot_configs
from lit_dendrite.sweeps.spec import load_sweep

REPO = CONFIGS.parents[1]
IDENTITIES = json.loads((Path(__file__).parent / "data" / "experiment_identities.json").read_text())
SEED_FLAG = "--seed_everything"


@cache
def resolved(args: tuple[str, ...]) -> dict:
    """The resolved configuration of training arguments (each distinct list of arguments parsed once)."""
    return resolve(list(args))


def identity(args: list[str]) -> str:
    """The configuration hash a run with these arguments records (the seed set after parsing, as a sweep does)."""
    seed_at = args.index(SEED_FLAG) if SEED_FLAG in args else None
    if seed_at is None:
        return config_hash(resolved(tuple(args)))
    others = tuple(args[:seed_at] + args[seed_at + 2 :])
    return config_hash({**resolved(others), "seed_everything": int(args[seed_at + 1])})


def experiment(name: str) -> list[str]:
    return ["--config", str(CONFIGS / f"{name}.yaml")]


def test_every_experiment_keeps_its_configuration_identity():
    now = {name: identity(experiment(name)) for name in IDENTITIES["experiments"]}
    assert now == IDENTITIES["experiments"]


LARGE_SWEEPS = ("beyond", "hparam_search", "paper", "paper_quick")  # 12 to 30 configurations to parse each


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if n in LARGE_SWEEPS else []) for n in sorted(IDENTITIES["sweeps"])],
)
def test_every_sweep_keeps_its_runs_and_their_identities(name):
    sweep = load_sweep(REPO / "configs" / "sweep" / f"{name}.yaml")
    args = {run.relative_dir: run.train_args(Path("runs") / sweep.name) for run in sweep.runs}
    run_dir_at = {run: given.index("--run_dir") for run, given in args.items()}
    now = {run: identity(given[: run_dir_at[run]] + given[run_dir_at[run] + 2 :]) for run, given in args.items()}
    # A sweep may gain runs (precision.yaml gained the CNN), never change or lose one it had.
    assert IDENTITIES["sweeps"][name].items() <= now.items()


def test_experiment_configs_are_at_most_two_fifths_of_the_lines_they_were():
    lines = sum(len(path.read_text().splitlines()) for path in CONFIGS.glob("*.yaml"))
    assert lines <= 0.4 * 1251, lines


def test_an_experiment_config_states_only_its_net_and_data_set_config_and_its_neuron():
    for name in IDENTITIES["experiments"]:
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        net_and_data, neuron = name.rsplit("_", 1)
        assert config.pop("extends") == f"{net_and_data}.yaml", name
        assert config == ({} if neuron == "2arg" else {"model": {"net": {"init_args": {"neuron": neuron}}}}), name


@pytest.mark.parametrize(
    ("net_and_data", "neuron"), [("mlp_mnist", "1arg"), ("cnn_cifar10", "relu"), ("cnn_mnist", "relu")]
)
def test_a_neuron_given_on_the_command_line_is_the_experiment_naming_it(net_and_data, neuron):
    """The paper's widths for a control (a table the matching reads) or the matched widths, and the same identity."""
    chosen = [*experiment(net_and_data), "--model.net.init_args.neuron", neuron]
    assert identity(chosen) == IDENTITIES["experiments"][f"{net_and_data}_{neuron}"]


def test_the_paper_gives_its_controls_widths_in_one_table_and_matching_reads_it():
    mlp = build(parse([*experiment("mlp_cifar10"), "--model.net.init_args.neuron", "relu"])).model.net
    assert list(mlp.widths) == list(PAPER_CONTROL_WIDTHS[("DendriticMLP", "cifar10")]["relu"])
    recorded = resolved(tuple([*experiment("mlp_cifar10"), "--model.net.init_args.neuron", "relu"]))
    assert recorded["model"]["net"]["init_args"].get("match_neuron") is None  # the record says what was built


def test_settled_widths_use_the_table_only_for_the_papers_architecture_matched_to_its_2arg_net():
    paper = {"widths": [64, 64, 64], "neuron": "1arg", "match_neuron": "2arg", "dropout": 0.1}
    assert settled_widths(DendriticMLP, "mnist", paper) == ([114, 114, 114], None)
    assert settled_widths(DendriticMLP, "digits", paper) == ([64, 64, 64], "2arg")  # no row: matched when built
    assert settled_widths(DendriticMLP, "mnist", {**paper, "inner_hidden": [16, 16]}) == ([64, 64, 64], "2arg")
    assert settled_widths(DendriticMLP, "mnist", {**paper, "widths": [32, 32]}) == ([32, 32], "2arg")
    assert settled_widths(DendriticMLP, "mnist", {**paper, "match_neuron": "relu"}) == ([64, 64, 64], "relu")
    assert settled_widths(DendriticCNN, "mnist", {**paper, "widths": [60, 120, 120, 120]})[1] == "2arg"
    assert settled_widths(DendriticMLP, "mnist", {**paper, "neuron": "2arg"}) == ([64, 64, 64], None)  # itself
    assert settled_widths(DendriticMLP, "mnist", {**paper, "match_neuron": None}) == ([64, 64, 64], None)


@pytest.mark.parametrize("neuron", sorted(NEURONS))
def test_every_registered_neuron_runs_on_a_net_without_a_config_of_its_own(neuron):
    """Parameter-matched to the 2-arg net of the same config (within match_width's tolerance)."""
    args = [*experiment("mlp_digits"), "--model.net.init_args.neuron", neuron]
    net = build(parse(args)).model.net
    two_arg = build(parse(experiment("mlp_digits"))).model.net
    assert net.neuron_name == neuron
    assert count_parameters(net) == pytest.approx(count_parameters(two_arg), rel=0.01)


def test_any_net_runs_on_any_data_set_from_the_command_line():
    args = [*experiment("cnn_digits"), "--data.dataset", "cifar100", "--model.net.init_args.neuron", "pau"]
    config = resolved(tuple(args))
    assert config["data"]["dataset"] == "cifar100" and config["model"]["net"]["init_args"]["num_classes"] == 100
    assert config["trainer"]["accelerator"] == "cpu"  # the digits schedule: the config's own, the data set aside


def test_a_sweep_can_name_a_net_and_data_set_and_put_the_neuron_on_an_axis(tmp_path):
    sweep_file = tmp_path / "configs" / "sweep" / "neurons.yaml"
    sweep_file.parent.mkdir(parents=True)
    (tmp_path / "configs" / "experiment").symlink_to(CONFIGS)
    neurons = ["2arg", "1arg", "relu"]
    sweep_file.write_text(  # paper.yaml's schedule
        "experiments: [mlp_mnist]\nseeds: [1]\noverrides: {protocol.joint_epochs: 200, protocol.frozen_epochs: 400}\n"
        f"grid: {{model.net.init_args.neuron: {neurons}}}\n"
    )
    sweep = load_sweep(sweep_file)
    assert [run.relative_dir for run in sweep.runs] == [f"mlp_mnist/neuron={n},seed=1" for n in neurons]
    paper = IDENTITIES["sweeps"]["paper"]
    for run, neuron in zip(sweep.runs, neurons):
        given = run.train_args(tmp_path)
        assert identity(given[: given.index("--run_dir")]) == paper[f"mlp_mnist_{neuron}/seed=1"]  # the same run


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_config_reads_its_bases_first_and_later_files_win(tmp_path):
    write(tmp_path / "defaults.yaml", "protocol: {patience: 3, pretrain_epochs: 7}\n")
    write(tmp_path / "net.yaml", "extends: defaults.yaml\nprotocol: {patience: 4}\n")
    write(tmp_path / "other.yaml", "extends: defaults.yaml\nmodel: {lr: 0.5}\n")
    leaf = write(tmp_path / "sub" / "leaf.yaml", "extends: [../net.yaml, ../other.yaml]\nmodel: {lr: 0.25}\n")
    assert [p.name for p in config_chain(leaf)] == ["defaults.yaml", "net.yaml", "other.yaml", "leaf.yaml"]
    assert composed_config(leaf) == {"protocol": {"patience": 4, "pretrain_epochs": 7}, "model": {"lr": 0.25}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("extends: missing.yaml\n", "extends .*missing.yaml, which does not exist; fix the path under `extends`"),
        ("extends: [12]\n", "`extends` must name a config file or a list of them"),
        ("extends: loop.yaml\n", "extend each other in a cycle"),
        ("- a list\n", "must hold a YAML mapping"),
    ],
)
def test_a_broken_chain_is_an_error_naming_the_file_and_the_fix(tmp_path, text, message):
    loop = write(tmp_path / "loop.yaml", text)
    with pytest.raises(ConfigFileError, match=message):
        config_chain(loop)
    with pytest.raises(Exception, match=message):
        parse(["--config", str(loop)])


def test_the_experiment_is_named_after_the_extending_file():
    cli = parse(experiment("mlp_digits_relu"))
    chain = ["defaults.yaml", "digits.yaml", "mlp_digits.yaml", "mlp_digits_relu.yaml"]
    assert [Path(str(path)).name for path in cli.config.config] == chain
    assert experiment_name(cli.config) == "mlp_digits_relu"


def test_a_submitted_chain_is_copied_whole_and_resolves_as_the_original(tmp_path):
    """A job reads copies of the experiment config and the files it extends, and records the experiment's name."""
    run = load_sweep(REPO / "configs" / "sweep" / "demo.yaml").runs[-1]
    given = run.train_args(tmp_path)
    submitted = snapshot_configs(tmp_path, {run.relative_dir: given})[run.relative_dir]
    snapshot = submitted[submitted.index("--config") + 1]
    assert all(path.parent == tmp_path / "submitted_configs" for path in config_chain(snapshot))
    assert identity(submitted[: submitted.index("--run_dir")]) == identity(given[: given.index("--run_dir")])
    assert experiment_name(parse(submitted).config) == run.experiment == "mlp_digits_relu"


def test_a_data_set_is_one_registration_and_trains_on_any_net_with_no_config_file(tmp_path):
    from test_data import make_mnist

    make_mnist(tmp_path / "data", folder="KMNIST", n_train=24, n_test=12)
    spec = DatasetSpec((1, 28, 28), 10, (0.1918,), (0.3483,), 1 / 6, IdxFiles("KMNIST", "KMNIST"))
    register_dataset("kmnist", spec)
    try:
        with pytest.raises(ValueError, match="'kmnist' is already registered"):
            register_dataset("kmnist", DatasetSpec((1, 28, 28), 10, (0.5,), (0.5,), 1 / 6, spec.files))
        result = quick_train(
            "mlp_digits_relu", tmp_path / "run", 1, 1, "--data.dataset", "kmnist", "--data.root", str(tmp_path / "data")
        )
    finally:
        DATASETS.pop("kmnist")
    assert result["status"] == "done" and result["dataset"] == "kmnist"
    assert result["config"]["model"]["net"]["init_args"]["mean"] == [0.1918]


def test_a_config_given_as_yaml_text_is_read_as_before():
    """jsonargparse takes a config's text in place of a file; text longer than a file name may be is no path."""
    text = yaml.safe_dump(composed_config(CONFIGS / "mlp_digits_relu.yaml")) + "#" * 300
    assert identity(["--config", text]) == IDENTITIES["experiments"]["mlp_digits_relu"]
