"""Sweep files: expansion into runs, run names and directories, random search, validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_dendrite.sweeps.cluster import ClusterError, load_cluster_config
from lit_dendrite.sweeps.spec import SweepError, cli_value, load_sweep

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("mlp_digits_2arg", "mlp_digits_relu")


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A configs/ folder with two (empty) experiment configs and a sweep/ folder for the test's sweep file."""
    for name in EXPERIMENTS:
        path = tmp_path / "configs" / "experiment" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("seed_everything: 0\n")
    (tmp_path / "configs" / "sweep").mkdir()
    return tmp_path / "configs"


def write_sweep(configs: Path, spec: dict, name: str = "s") -> Path:
    path = configs / "sweep" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_zip_and_seeds_expand_in_file_order_with_short_names(configs: Path) -> None:
    spec = {
        "experiments": list(EXPERIMENTS),
        "seeds": [1, 2],
        "grid": {"model.lr": [1.0e-3, 3.0e-4]},
        "zip": [{"model.net.init_args.widths": [[64, 64], [128, 128]], "model.net.init_args.dropout": [0.0, 0.5]}],
    }
    sweep = load_sweep(write_sweep(configs, spec, "grid"))
    assert sweep.name == "grid"
    assert len(sweep.runs) == 2 * 2 * 2 * 2
    first = sweep.runs[0]
    assert first.relative_dir == "mlp_digits_2arg/lr=0.001,widths=64-64,dropout=0,seed=1"
    assert [r.name for r in sweep.runs[:4]] == [
        "lr=0.001,widths=64-64,dropout=0,seed=1",
        "lr=0.001,widths=64-64,dropout=0,seed=2",
        "lr=0.001,widths=128-128,dropout=0.5,seed=1",
        "lr=0.001,widths=128-128,dropout=0.5,seed=2",
    ]
    assert {r.experiment for r in sweep.runs[8:]} == {"mlp_digits_relu"}


def test_train_args_are_lightning_cli_overrides_with_run_dir(configs: Path, tmp_path: Path) -> None:
    spec = {"experiments": ["mlp_digits_2arg"], "seeds": [7], "overrides": {"trainer.max_epochs": 2},
            "grid": {"model.lr": [1.0e-5], "model.net.init_args.widths": [[32, 16]]}}  # fmt: skip
    run = load_sweep(write_sweep(configs, spec)).runs[0]
    args = run.train_args(tmp_path / "out" / "s", extra=["--trainer.devices", "1"])
    config = str((configs / "experiment" / "mlp_digits_2arg.yaml").resolve())
    assert args == [
        "--config", config,
        "--experiment", "mlp_digits_2arg",
        "--trainer.max_epochs", "2",
        "--model.lr", "1.0e-05",
        "--model.net.init_args.widths", "[32, 16]",
        "--seed_everything", "7",
        "--run_dir", str(tmp_path / "out" / "s" / "mlp_digits_2arg" / "lr=1e-05,widths=32-16,seed=7"),
        "--trainer.devices", "1",
    ]  # fmt: skip


@pytest.mark.parametrize(("value", "text"), [(1e-5, "1.0e-05"), (0.001, "0.001"), (3, "3"), (True, "true"),
                                             (None, "null"), ([1, 2], "[1, 2]"), ("relu", "relu")])  # fmt: skip
def test_cli_values_read_back_as_the_same_yaml_value(value: object, text: str) -> None:
    assert cli_value(value) == text
    assert yaml.safe_load(text) == value


def test_random_search_is_deterministic_and_draws_within_ranges(configs: Path) -> None:
    spec = {
        "experiments": ["mlp_digits_2arg"],
        "seeds": [1],
        "random": {
            "trials": 6,
            "seed": 3,
            "axes": {
                "model.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                "model.net.init_args.dropout": {"choice": [0.1, 0.2]},
            },
        },
    }
    first = load_sweep(write_sweep(configs, spec, "a")).runs
    again = load_sweep(write_sweep(configs, spec, "b")).runs
    assert [r.name for r in first] == [r.name for r in again]
    lrs = [dict(r.overrides)["model.lr"] for r in first]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 6
    assert {dict(r.overrides)["model.net.init_args.dropout"] for r in first} <= {0.1, 0.2}
    other_seed = load_sweep(write_sweep(configs, {**spec, "random": {**spec["random"], "seed": 4}}, "c")).runs
    assert [r.name for r in other_seed] != [r.name for r in first]
    # the name shows exactly the value passed to train
    assert all(float(r.name.split(",")[0].removeprefix("lr=")) == lr for r, lr in zip(first, lrs))


def test_experiment_given_as_a_path(configs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(configs.parent)
    spec = {"experiments": ["configs/experiment/mlp_digits_relu.yaml"], "seeds": [1]}
    (run,) = load_sweep(write_sweep(configs, spec)).runs
    assert run.relative_dir == "mlp_digits_relu/seed=1"


def test_an_experiment_entry_may_carry_its_own_seeds_and_overrides(configs: Path) -> None:
    cnn = {"experiment": "mlp_digits_relu", "seeds": [7], "overrides": {"trainer.max_epochs": 3, "a.x": 2}}
    spec = {"experiments": ["mlp_digits_2arg", cnn], "seeds": [1, 2], "overrides": {"trainer.max_epochs": 9}}
    runs = load_sweep(write_sweep(configs, spec)).runs
    assert [run.relative_dir for run in runs] == [
        "mlp_digits_2arg/seed=1",
        "mlp_digits_2arg/seed=2",
        "mlp_digits_relu/seed=7",
    ]
    assert dict(runs[0].overrides) == {"trainer.max_epochs": 9, "seed_everything": 1}
    assert dict(runs[2].overrides) == {"trainer.max_epochs": 3, "a.x": 2, "seed_everything": 7}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"experiments": [{"experiment": "mlp_digits_2arg", "seed": [1]}], "seeds": [1]},
         "an experiment mapping needs `experiment`"),
        ({"experiments": [{"experiment": "mlp_digits_2arg", "seeds": []}], "seeds": [1]},
         "`experiments.mlp_digits_2arg.seeds` must be a non-empty list"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "gird": {}}, "unknown key(s) ['gird']"),
        ({"experiments": [], "seeds": [1]}, "empty sweep"),
        ({"experiments": ["mlp_digits_2arg"]}, "`seeds` must be a non-empty list"),
        ({"experiments": ["nope"], "seeds": [1]}, "experiment 'nope' not found"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "grid": {"model.lr": []}}, "non-empty list"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "grid": {"--model.lr": [1]}}, "without '--'"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "zip": [{"a.x": [1, 2], "a.y": [1]}]}, "equal lengths"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "grid": {"a.lr": [1]}, "zip": {"b.lr": [1]}},
         "share the short name"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "grid": {"a.x": [1]}, "zip": {"a.x": [2]}},
         "more than one of grid/zip/random"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1],
          "random": {"trials": 3, "axes": {"a.x": {"choice": [1]}}}}, "two runs share the directory"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1],
          "random": {"trials": 2, "axes": {"a.x": {"normal": [0, 1]}}}}, "must be one of"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1],
          "random": {"trials": 2, "axes": {"a.x": {"loguniform": [0, 1]}}}}, "low > 0"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "random": {"trials": 0, "axes": {}}}, "positive integer"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "grid": {"a.x": [1]}, "short_names": {"b.y": "y"}},
         "not axes"),
        ({"experiments": ["mlp_digits_2arg"], "seeds": [1], "overrides": {"a.x": 1}, "grid": {"a.x": [2]}},
         "both fixed overrides and axes"),
    ],
)  # fmt: skip
def test_bad_sweep_files_fail_with_a_message_naming_the_problem(configs: Path, spec: dict, message: str) -> None:
    with pytest.raises(SweepError) as caught:
        load_sweep(write_sweep(configs, spec))
    assert message in str(caught.value)


def test_missing_sweep_file(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "nope.yaml")


def test_shipped_sweep_files_expand() -> None:
    experiments = REPO / "configs" / "experiment"
    if not (experiments / "mlp_mnist_2arg.yaml").is_file():
        pytest.skip("experiment configs are not in this checkout yet")
    sizes = {name: len(load_sweep(REPO / "configs" / "sweep" / f"{name}.yaml").runs) for name in
             ("paper", "paper_quick", "digits_repro", "beyond", "beyond_digits", "demo", "hparam_search",
              "tune_digits", "precision")}  # fmt: skip
    assert sizes == {"paper": 288, "paper_quick": 60, "digits_repro": 33, "beyond": 150, "beyond_digits": 45,
                     "demo": 9, "hparam_search": 15, "tune_digits": 24, "precision": 18}  # fmt: skip
    # a search's runs are its final step's: each condition's best configuration on the sweep's seeds


def test_shipped_cluster_configs_load_and_ddp_configs_match_devices() -> None:
    configs = {p.stem: load_cluster_config(p) for p in (REPO / "configs" / "cluster").glob("*.yaml")}
    assert {"slurm_gpu", "slurm_ddp", "local", "test_cluster"} <= set(configs)
    ddp = configs["slurm_ddp"]
    args = ddp.trainer_args()
    assert args[args.index("--trainer.devices") + 1] == str(ddp.gpus_per_node)
    assert args[args.index("--trainer.num_nodes") + 1] == str(ddp.nodes)
    assert args[args.index("--trainer.strategy") + 1] == "ddp"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"partiton": "gpu"}, "unknown key(s) ['partiton']"),
        ({"gpus_per_node": 4, "tasks_per_node": 2}, "must equal gpus_per_node"),
        ({"time_min": 0}, "time_min must be a positive integer"),
        ({"sbatch_extra": ["mail-type=FAIL"]}, "'--key=value'"),
    ],
)
def test_bad_cluster_configs_fail(tmp_path: Path, raw: dict, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ClusterError) as caught:
        load_cluster_config(path)
    assert message in str(caught.value)
