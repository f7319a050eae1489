"""The training command: LightningCLI parsing of an experiment config, then the whole protocol of one run.

``train(args)`` is a plain function so that a launcher, a sweep job or a test can call it with a list of
arguments (``--config FILE`` and LightningCLI / jsonargparse overrides).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from jsonargparse._link_arguments import skip_apply_links  # no public way to parse without the links (4.32-4.53)
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment

from lit_dendrite.commandline import PARSER_OPTIONS
from lit_dendrite.data.datamodule import ImageDataModule
from lit_dendrite.data.datasets import NET_ARGS, dataset_spec
from lit_dendrite.io import write_json_atomic
from lit_dendrite.models.classifier import Classifier, Diverged
from lit_dendrite.models.protocol import Protocol, RunProtocol, check_trainer_options, protocol_dict
from lit_dendrite.models.stall import Stalled
from lit_dendrite.nn.nets import CONFIG_KEY
from lit_dendrite.runs import (
    ConfigMismatch,
    FileLock,
    Locked,
    RunDir,
    RunRecord,
    config_differences,
    config_hash,
    default_run_dir,
    provenance,
    record_config,
    recorded_config,
)

TRAINER_KEYS_OWNED_BY_PROTOCOL = ("logger", "default_root_dir")


class TrainCLI(LightningCLI):
    """LightningCLI for (Classifier, ImageDataModule) plus ``experiment``, ``run_dir`` and ``protocol``.

    The net's :data:`~lit_dendrite.data.datasets.NET_ARGS` (input shape, classes, normalisation) are linked from
    ``data.dataset``: a config names its data set only, and one that states them is an error naming the fix. The
    resolved configuration (the run record) holds the linked values, as the net is built with them.

    Parsing only: classes are instantiated per session by :func:`train`.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment", type=str | None, default=None, help="Experiment name (default: config stem)"
        )
        parser.add_argument(
            "--variant",
            type=str | None,
            default=None,
            help="Name of a variant of the experiment, such as configs/quick.yaml's 'quick': the default run "
            "directory becomes runs/<experiment>/variant=<variant>,seed=<seed>",
        )
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Run directory (default: runs/<experiment>/seed=<seed>, or .../variant=<variant>,seed=<seed>)",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="If the run directory holds another configuration, discard its results and train afresh "
            "(a run directory holds one configuration; without this, a mismatch is an error)",
        )
        parser.add_class_arguments(Protocol, "protocol")
        # the per-session model summary repeats the net three times (with Lightning's "0 Total Flops"): on request
        parser.set_defaults({"trainer.enable_model_summary": False})
        batch_counts_first(parser)
        for name in NET_ARGS:
            parser.link_arguments(
                "data.dataset",
                f"{CONFIG_KEY}.{name}",
                compute_fn=lambda dataset, name=name: dataset_spec(dataset).net_args[name],
            )

    def parse_arguments(self, parser: LightningArgumentParser, args: Sequence[str]) -> None:
        """Parse, then refuse a config that states what the data set determines: a link overwrites such a value
        silently, so an old config's normalisation for another data set would otherwise go unnoticed."""
        super().parse_arguments(parser, args)
        with skip_apply_links():  # what the config files and options say, before links and defaults
            given = parser.parse_args(args, defaults=False)
        check_no_data_set_facts(given, self.config.data.dataset)

    def instantiate_classes(self) -> None:
        """Nothing is built at parse time; :func:`train` builds a fresh model for each session."""

    def _set_seed(self) -> None:
        """Parsing has no side effects: the protocol seeds each session itself."""


BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


def batch_counts_first(parser: LightningArgumentParser) -> None:
    """Read ``--trainer.limit_*_batches 1`` as one batch, as Lightning means an int. Lightning annotates these
    ``float | int | None`` and jsonargparse takes the first type that accepts a value, so every integer became a
    float and ``1`` the whole epoch (``1.0``); trying int first keeps ``1.0`` and ``0.5`` the fractions they are."""
    for action in parser._actions:  # no public way to change a parsed class's argument type (jsonargparse 4.53)
        if action.dest.removeprefix("trainer.") in BATCH_LIMITS:
            action._typehint = int | float | None


def check_no_data_set_facts(given: Namespace, dataset: str) -> None:
    """A ValueError naming each of the net's :data:`~lit_dendrite.data.datasets.NET_ARGS` that ``given`` (the
    arguments as written) sets, with the value ``data.dataset`` gives it and the fix."""
    stated = {name: value for name, value in dataset_spec(dataset).net_args.items() if f"{CONFIG_KEY}.{name}" in given}
    if stated:
        shown = ", ".join(f"{CONFIG_KEY}.{name}" for name in stated)
        derived = ", ".join(f"{name}={list(v) if isinstance(v, tuple) else v}" for name, v in stated.items())
        raise ValueError(
            f"the config sets {shown}, which the data set determines (data.dataset {dataset!r} gives {derived}); "
            "remove these keys from the config files and the command line: the net takes them from data.dataset "
            "(lit_dendrite/data/datasets.py, DATASETS)"
        )


def parse(args: Sequence[str]) -> TrainCLI:
    """Parse and validate training arguments (a leading ``fit`` is accepted); raises on a bad config."""
    args = list(args)
    if args[:1] == ["fit"]:
        args = args[1:]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
        cli = TrainCLI(
            Classifier,
            ImageDataModule,
            args=args,
            run=False,
            seed_everything_default=0,
            save_config_callback=None,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, **PARSER_OPTIONS},
        )
    check_trainer_options(build(cli).trainer)
    return cli


def build(cli: TrainCLI) -> Namespace:
    """Instantiate model, data module, trainer options and protocol from the parsed config."""
    return cli.parser.instantiate_classes(cli.config)


def experiment_name(config: Namespace) -> str:
    """The ``experiment`` key, else the stem of the last config file given."""
    if config.get("experiment"):
        return config.experiment
    files = [Path(str(c)) for c in (config.get("config") or [])]
    return files[-1].stem if files else "experiment"


def run_directory(config: Namespace) -> RunDir:
    """The ``run_dir`` option, else ``runs/<experiment>/[variant=<variant>,]seed=<seed>``."""
    if config.run_dir:
        return RunDir(Path(config.run_dir))
    return RunDir(default_run_dir(experiment_name(config), int(config.seed_everything), config.variant))


def resolved_config(cli: TrainCLI) -> dict[str, Any]:
    """The whole resolved configuration as plain data, with the values linked from the data set: the net a run
    record describes is built from its ``model.net`` alone."""
    return yaml.safe_load(cli.parser.dump(cli.config, skip_check=True, skip_link_targets=False))


def resolve(args: Sequence[str]) -> dict[str, Any]:
    """The resolved configuration of training arguments, as a run records it (parsing only)."""
    return resolved_config(parse(args))


def trainer_options(init: Namespace) -> dict[str, Any]:
    """Trainer arguments from the config, minus those the protocol owns, plus Slurm's environment plugin."""
    options = {k: v for k, v in dict(init.trainer).items() if k not in TRAINER_KEYS_OWNED_BY_PROTOCOL}
    if SLURMEnvironment.detect() and not options.get("plugins"):
        options["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    return options


def train(args: Sequence[str], extra_callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run the experiment described by ``args`` into its run directory and return its run record's data.

    The run directory is locked while this runs (a second process on it stops, naming the holder) and holds one
    configuration: another one is an error listing the differing keys, unless ``--overwrite`` discards it. A
    finished run (a record with status done, diverged or stalled) is not run again; an interrupted one resumes from its
    last completed session and last checkpoint.
    """
    cli = parse(args)
    config = cli.config
    seed = int(config.seed_everything)
    experiment = experiment_name(config)
    run_dir = run_directory(config)
    lock = FileLock(
        run_dir.lock, "another process is training this run; wait for it or stop it, or use another --run_dir"
    )
    if rank_zero_only.rank == 0:
        lock.acquire()
    try:
        return _train(cli, experiment, seed, run_dir, extra_callbacks)
    finally:
        lock.release()


def claim(run_dir: RunDir, config_data: dict[str, Any], overwrite: bool) -> RunRecord | None:
    """Check that ``run_dir`` holds this configuration or none (or discard another one with ``overwrite``);
    returns the record of a finished run, which is not trained again."""
    recorded = recorded_config(run_dir)
    differences = config_differences(recorded[0], config_data) if recorded is not None else {}
    if differences and not overwrite:
        raise ConfigMismatch(run_dir.path, recorded[1], differences)
    if differences:
        if rank_zero_only.rank == 0:
            print(
                f"[lit_dendrite] --overwrite: discarding {run_dir.path}, which held another configuration "
                f"({', '.join(differences)})"
            )
            run_dir.discard_results()
    elif run_dir.result.is_file() and (previous := RunRecord.read(run_dir)).finished:
        return previous
    return None


def _train(
    cli: TrainCLI, experiment: str, seed: int, run_dir: RunDir, extra_callbacks: Sequence[Callback]
) -> dict[str, Any]:
    config_data = resolved_config(cli)
    if (previous := claim(run_dir, config_data, bool(cli.config.overwrite))) is not None:
        print(summary_line(previous.data))
        return dict(previous.data)
    init = build(cli)
    init.data.check_available()
    if rank_zero_only.rank == 0:
        record_config(run_dir, config_data)
    net = init.model.net
    callbacks = list(init.trainer.get("callbacks") or [])
    user_options = trainer_options(init)
    user_options.pop("callbacks", None)
    runner = RunProtocol(
        build_model=lambda: build(cli).model,
        datamodule=init.data,
        trainer_kwargs=user_options,
        protocol=init.protocol,
        run_dir=run_dir,
        seed=seed,
        callbacks=lambda: [*callbacks, *extra_callbacks],
        hparams={
            "experiment": experiment,
            "dataset": init.data.dataset,
            "net": type(net).__name__,
            "neuron": net.neuron_name,
            "widths": str(list(net.widths)),
            "lr": init.model.lr,
            "batch_size": init.data.batch_size,
        },
    )
    status, error = "done", None
    try:
        runner.run()
    except Diverged as diverged:
        status, error = "diverged", str(diverged)
    except Stalled as stalled:
        status, error = "stalled", str(stalled)
    sessions = runner.summaries
    final = sessions[list(sessions)[-1]] if sessions and status == "done" else {}
    result = {
        "status": status,
        "error": error,
        "experiment": experiment,
        "run_dir": str(run_dir.path),
        "seed": seed,
        "dataset": init.data.dataset,
        "net": type(net).__name__,
        "neuron": net.neuron_name,
        "widths": list(net.widths),
        "num_params": sum(p.numel() for p in net.parameters()),
        "test_acc": final.get("test_acc"),
        "test_loss": final.get("test_loss"),
        "best_val_loss": final.get("best_val_loss"),
        "best_checkpoint": final.get("best_checkpoint"),
        "epochs": {name: s["epochs"] for name, s in sessions.items()},
        "sessions": sessions,
        "protocol": protocol_dict(init.protocol),
        "config": config_data,
        "config_hash": config_hash(config_data),
        **provenance(),
        "wall_time_s": round(sum(s.get("wall_time_s", 0.0) for s in sessions.values()), 2),
    }
    if rank_zero_only.rank == 0:
        write_json_atomic(run_dir.result, result)
        print(summary_line(result))
    return result


def summary_line(result: dict[str, Any]) -> str:
    """One line a user reads at the end of a run."""
    acc = result.get("test_acc")
    acc_text = "n/a" if acc is None else f"{acc:.4f}"
    return (
        f"[lit_dendrite] {result['experiment']} seed={result['seed']} status={result['status']} "
        f"test_acc={acc_text} params={result['num_params']} -> {RunDir(Path(result['run_dir'])).result}"
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``launch/train.py``: a run directory in use or holding another configuration is a one-line
    error (exit status 2)."""
    try:
        train(sys.argv[1:] if args is None else args)
    except (ConfigMismatch, Locked) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
