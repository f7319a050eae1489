"""An experiment config names its data set, net and neuron: the net's input shape, class count and normalisation
follow ``data.dataset`` (one table, ``DATASETS``), reach parameter matching, and are recorded with the run; a config
that states them is an error; runs recorded when configs stated them are still the same configuration."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import CONFIGS, quick_train

from lit_dendrite.cli import build, parse, resolve, resolved_config
from lit_dendrite.config_files import composed_config
from lit_dendrite.data.datasets import DATASETS, NET_ARGS, dataset_spec
from lit_dendrite.models import load_net
from lit_dendrite.nn import DendriticCNN, count_parameters, match_width
from lit_dendrite.runs import RunDir, config_hash, record_config
from lit_dendrite.sweeps.backends import cluster_backend
from lit_dendrite.sweeps.cluster import load_cluster_config
from lit_dendrite.sweeps.launch import config_mismatches, run_args
from lit_dendrite.sweeps.spec import load_sweep

REPO = CONFIGS.parents[1]
RECORDED_BEFORE = Path(__file__).parent / "data" / "digits_repro_configs_536b17c.json"


def net_facts(net: torch.nn.Module) -> dict[str, object]:
    """What the net was built with from its data set, read back from the module itself."""
    return {
        "in_shape": tuple(net.in_shape),
        "num_classes": net.num_classes,
        "mean": tuple(net.normalize.mean.flatten().tolist()),
        "std": tuple(net.normalize.std.flatten().tolist()),
    }


def expected_facts(dataset: str) -> dict[str, object]:
    spec = dataset_spec(dataset)
    as_float32 = {name: tuple(torch.tensor(getattr(spec, name)).tolist()) for name in ("mean", "std")}
    return {"in_shape": spec.in_shape, "num_classes": spec.num_classes, **as_float32}


def test_no_experiment_config_states_what_its_data_set_determines():
    for path in sorted(REPO.glob("configs/**/*.yaml")):
        text = path.read_text()
        assert not [name for name in NET_ARGS if f" {name}:" in text], path


def test_a_config_without_data_keys_trains_with_the_data_sets_shape_classes_and_normalisation(tmp_path):
    result = quick_train("mlp_digits_relu", tmp_path / "run", 1, 0)
    assert result["status"] == "done" and result["test_acc"] > 0.1
    recorded = result["config"]["model"]["net"]["init_args"]
    assert {name: recorded[name] for name in NET_ARGS} == json.loads(json.dumps(DATASETS["digits"].net_args))
    assert net_facts(load_net(tmp_path / "run")) == expected_facts("digits")


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_changing_the_data_set_alone_switches_shape_classes_and_normalisation(dataset):
    cli = parse(["--config", str(CONFIGS / "mlp_digits_2arg.yaml"), "--data.dataset", dataset])
    assert net_facts(build(cli).model.net) == expected_facts(dataset)
    recorded = resolved_config(cli)["model"]["net"]["init_args"]
    assert {name: recorded[name] for name in NET_ARGS} == json.loads(json.dumps(DATASETS[dataset].net_args))


@pytest.mark.parametrize("dataset", ["digits", "cifar100"])  # cifar10: the paper's own widths (test_configs.py)
def test_the_data_sets_shape_reaches_the_width_matching_of_a_control(dataset):
    control = build(parse(["--config", str(CONFIGS / "cnn_digits_relu.yaml"), "--data.dataset", dataset])).model.net
    init_args = resolve(["--config", str(CONFIGS / "cnn_digits_2arg.yaml")])["model"]["net"]["init_args"]
    architecture = {"kernels": init_args["kernels"], "dropout": init_args["dropout"], **DATASETS[dataset].net_args}
    reference = {"neuron": "2arg", "widths": init_args["widths"]}
    assert list(control.widths) == match_width(DendriticCNN, {**architecture, "neuron": "relu"}, reference)
    two_arg = count_parameters(DendriticCNN(**architecture, **reference))
    assert count_parameters(control) == pytest.approx(two_arg, rel=0.01)


OLD_STYLE = {"in_shape": "[1, 28, 28]", "num_classes": "10", "mean": "[0.3053]", "std": "[0.3247]"}


def test_an_old_style_config_that_states_them_is_an_error_naming_the_fix(tmp_path):
    config = composed_config(CONFIGS / "mlp_digits_2arg.yaml")
    config["model"]["net"]["init_args"].update({name: yaml.safe_load(v) for name, v in OLD_STYLE.items()})
    old = tmp_path / "old_style.yaml"
    old.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError) as raised:
        parse(["--config", str(old)])
    message = f"{raised.value}\n{raised.value.fix}"  # what is wrong, then the fix
    for name in NET_ARGS:
        assert f"model.net.init_args.{name}" in message
    assert "data.dataset 'digits' gives" in message and "mean=[0.3053]" in message and "remove these keys" in message


@pytest.mark.parametrize("name", NET_ARGS)
def test_stating_one_on_the_command_line_is_an_error_even_with_the_right_value(name):
    with pytest.raises(ValueError, match=rf"sets model\.net\.init_args\.{name}, which the data set determines"):
        parse(["--config", str(CONFIGS / "mlp_digits_2arg.yaml"), f"--model.net.init_args.{name}", OLD_STYLE[name]])


def test_print_config_gives_a_config_that_parses_again(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["--config", str(CONFIGS / "cnn_digits_2arg.yaml"), "--print_config"])
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert net_facts(build(parse(["--config", str(printed)])).model.net) == expected_facts("digits")


def test_runs_recorded_when_configs_stated_them_hold_the_same_configuration(tmp_path):
    """The configurations the digits reproduction recorded before this change (written by that code) are the ones
    its sweep gives now: rerunning the sweep over those run directories reports no CONFIG DIFFERS."""
    recorded = json.loads(RECORDED_BEFORE.read_text())["runs"]
    sweep = load_sweep(REPO / "configs" / "sweep" / "digits_repro.yaml")
    sweep_dir = tmp_path / sweep.name
    cluster = load_cluster_config(REPO / "configs" / "cluster" / "local.yaml")
    args = {run.relative_dir: run_args(run, sweep_dir, cluster_backend("local"), cluster) for run in sweep.runs}
    assert set(recorded) <= set(args) and {name.split("/")[0] for name in recorded} == {
        run.experiment for run in sweep.runs
    }
    for run, config in recorded.items():
        record_config(RunDir(sweep_dir / run), config)
        assert config_hash(resolve(args[run])) == config_hash(config), run
    assert config_mismatches(sweep_dir, {run: args[run] for run in recorded}) == {}
