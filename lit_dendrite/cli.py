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

import torch
import yaml
from jsonargparse import ActionConfigFile, Namespace
from jsonargparse import Path as ArgumentPath
from jsonargparse._link_arguments import skip_apply_links  # no public way to parse without the links (4.32-4.53)
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import __version__ as lightning_version
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment

from lit_dendrite.commandline import PARSER_OPTIONS
from lit_dendrite.config_files import EXTENDS, config_chain, read_config, without_extends
from lit_dendrite.data.datamodule import ImageDataModule
from lit_dendrite.data.datasets import NET_ARGS, dataset_spec
from lit_dendrite.errors import ConfigError, run_command
from lit_dendrite.io import write_json_atomic
from lit_dendrite.models.classifier import Classifier, Diverged
from lit_dendrite.models.protocol import Protocol, RunProtocol, check_trainer_options, protocol_dict
from lit_dendrite.models.resume import checkpoint_config_hashes
from lit_dendrite.models.stall import Stalled
from lit_dendrite.nn.matching import settled_widths
from lit_dendrite.nn.nets import CONFIG_KEY, NETS
from lit_dendrite.preflight import check_config_files, check_memory, check_seed, check_trainer
from lit_dendrite.runs import (
    ConfigMismatch,
    FileLock,
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
COMMAND = "python launch/train.py"
OVERWRITE = "--overwrite true"
"""How this command's own option discards a run directory's other configuration (train.py's options take a value)."""


class ExtendingConfigFile(ActionConfigFile):
    """``--config FILE`` that reads first the files FILE builds on (its ``extends``, see
    :mod:`lit_dendrite.config_files`), as if each had been given by its own ``--config`` before it."""

    def __call__(self, parser: LightningArgumentParser, cfg: Namespace, values: str, option_string=None) -> None:
        try:
            is_file = Path(values).is_file()
        except OSError:  # a config given as a YAML string too long to be a file name
            is_file = False
        if not is_file:  # a config given as a YAML string, or a missing file: jsonargparse's errors
            super().__call__(parser, cfg, values, option_string)
            return
        if cfg.get("experiment") is None:  # the first file given names the experiment; overlays after it do not
            cfg["experiment"] = Path(values).stem
        for file in config_chain(values):
            config = read_config(file)
            if EXTENDS not in config:
                self.apply_config(parser, cfg, self.dest, str(file))
                continue
            self.apply_config(parser, cfg, self.dest, yaml.safe_dump(without_extends(config)))
            cfg[self.dest][-1] = ArgumentPath(str(file), mode="fr")  # the file, not the text it was read as


class TrainCLI(LightningCLI):
    """LightningCLI for (Classifier, ImageDataModule) plus ``experiment``, ``run_dir`` and ``protocol``.

    The net's :data:`~lit_dendrite.data.datasets.NET_ARGS` (input shape, classes, normalisation) are linked from
    ``data.dataset``: a config names its data set only, and one that states them is an error naming the fix. The
    resolved configuration (the run record) holds the linked values, as the net is built with them.

    A config file may build on others (``extends``, :class:`ExtendingConfigFile`). Parsing only: classes are
    instantiated per session by :func:`train`.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser with a ``--config`` that reads the files a config extends first."""
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={lightning_version}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=ExtendingConfigFile,
            help="Path to a configuration file in yaml format; its "
            f"`{EXTENDS}` names config files it builds on (docs/configs.md)",
        )
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment", type=str | None, default=None, help="Experiment name (default: first config's stem)"
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
        """Parse, then refuse a config that states what the data set determines (a link overwrites such a value
        silently, so an old config's normalisation for another data set would otherwise go unnoticed), then settle
        the net's width matching (:func:`settle_widths`)."""
        super().parse_arguments(parser, args)
        with skip_apply_links():  # what the config files and options say, before links and defaults
            given = parser.parse_args(args, defaults=False)
        check_no_data_set_facts(given, self.config.data.dataset)
        settle_widths(self.config)

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
        raise ConfigError(
            f"the config sets {shown}, which the data set determines (data.dataset {dataset!r} gives {derived})",
            "remove these keys from the config files and the command line: the net takes them from data.dataset "
            "(lit_dendrite/data/datasets.py, DATASETS)",
        )


def settle_widths(config: Namespace) -> None:
    """Spell the net's widths as it is built (:func:`~lit_dendrite.nn.matching.settled_widths`): a net matched to
    its own neuron is that net, a control of the paper gets the paper's widths. So a neuron picked on the command
    line or a sweep axis (``match_neuron: 2arg`` being the default) is the same configuration, with the same run
    directory identity, as the experiment config naming that neuron."""
    net = NETS.get(str(config.model.net.class_path).rsplit(".", 1)[-1])
    args = config.model.net.init_args
    if net is None or "match_neuron" not in args:
        return
    widths, match_neuron = settled_widths(net, config.data.dataset, args)
    if match_neuron != args.match_neuron:
        args.widths, args.match_neuron = widths, match_neuron


def parse(args: Sequence[str]) -> TrainCLI:
    """Parse and validate training arguments (a leading ``fit`` is accepted); raises on a bad config."""
    args = list(args)
    if args[:1] == ["fit"]:
        args = args[1:]
    check_config_files(args)
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
    check_seed(cli.config.seed_everything)
    with torch.device("meta"):  # nothing allocated before the memory is checked
        init = build(cli)
    check_trainer_options(init.trainer)
    check_memory(init)
    return cli


def build(cli: TrainCLI) -> Namespace:
    """Instantiate model, data module, trainer options and protocol from the parsed config."""
    return cli.parser.instantiate_classes(cli.config)


def experiment_name(config: Namespace) -> str:
    """The ``experiment`` key (by default the first config file's stem, see :class:`ExtendingConfigFile`), else the
    stem of the last config file given."""
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
    if run_dir.path.exists() and not run_dir.path.is_dir():
        raise ConfigError(f"--run_dir {run_dir.path} is a file, not a directory", "pass a directory to --run_dir")
    init = build(cli)
    init.data.check_available()  # before the run directory is made: a run without data leaves nothing behind
    check_trainer(lambda: trainer_options(init))
    created = [p for p in (run_dir.path, *run_dir.path.parents) if not p.exists()]
    lock = FileLock(
        run_dir.lock, "another process is training this run; wait for it or stop it, or use another --run_dir"
    )
    if rank_zero_only.rank == 0:
        lock.acquire()
    try:
        return _train(cli, init, experiment, seed, run_dir, extra_callbacks)
    finally:
        lock.release()
        if created and rank_zero_only.rank == 0 and not run_dir.config.exists():
            remove_unused(run_dir, created)


def remove_unused(run_dir: RunDir, created: list[Path]) -> None:
    """Remove the lock file and the (empty) directories made for a run that stopped before it recorded anything."""
    run_dir.lock.unlink(missing_ok=True)
    for directory in created:
        try:
            directory.rmdir()
        except OSError:  # not empty: something else wrote there meanwhile
            return


def claim(run_dir: RunDir, config_data: dict[str, Any], overwrite: bool) -> RunRecord | None:
    """Check that ``run_dir`` holds this configuration or none (or discard another one with ``overwrite``);
    returns the record of a finished run, which is not trained again. A directory holding results but no readable
    configuration is known by the configuration hash its checkpoints carry."""
    recorded = recorded_config(run_dir)
    if recorded is None and run_dir.results():
        differs = unknown_configuration(run_dir, config_data)
    else:
        differences = config_differences(recorded[0], config_data) if recorded is not None else {}
        if differences and not overwrite:
            raise ConfigMismatch(run_dir.path, recorded[1], differences, OVERWRITE)
        differs = ", ".join(differences)
    if differs and not overwrite:
        raise ConfigError(
            f"{run_dir.path} holds results but no readable configuration ({run_dir.config.name} is missing or "
            f"damaged): {differs}",
            f"use another --run_dir for this configuration, or add {OVERWRITE} to discard its results and train afresh",
        )
    if differs:
        if rank_zero_only.rank == 0:
            print(
                f"[lit_dendrite] --overwrite: discarding {run_dir.path}, which held another configuration ({differs})"
            )
            run_dir.discard_results()
    elif run_dir.result.is_file() and (previous := RunRecord.read(run_dir)).finished:
        return previous
    return None


def unknown_configuration(run_dir: RunDir, config_data: dict[str, Any]) -> str:
    """Why the results of a run directory without a readable configuration cannot be taken for ``config_data``'s,
    judged by the hashes its checkpoints carry; empty where every checkpoint carries this configuration's."""
    hashes = checkpoint_config_hashes(run_dir)
    wanted = config_hash(config_data)
    if not hashes:
        return "it holds no readable checkpoint that records which configuration produced its results"
    others = sorted({str(h) for h in hashes.values() if h != wanted})
    if not others:
        return ""
    if others == ["None"]:
        return "its checkpoints do not record which configuration produced them"
    return f"its checkpoints were written by configuration hash {', '.join(others)}, not this one's ({wanted})"


def _train(
    cli: TrainCLI,
    init: Namespace,
    experiment: str,
    seed: int,
    run_dir: RunDir,
    extra_callbacks: Sequence[Callback],
) -> dict[str, Any]:
    config_data = resolved_config(cli)
    if (previous := claim(run_dir, config_data, bool(cli.config.overwrite))) is not None:
        print(summary_line(previous.data, run_dir))
        return dict(previous.data)
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
        config_hash=config_hash(config_data),
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
        print(summary_line(result, run_dir))
    return result


def summary_line(result: dict[str, Any], run_dir: RunDir) -> str:
    """One line a user reads at the end of a run (``run_dir``: where the record lies now, which a copied or moved
    run's recorded ``run_dir`` is not)."""
    acc = result.get("test_acc")
    acc_text = f"{acc:.4f}" if isinstance(acc, (int, float)) else "n/a"
    return (
        f"[lit_dendrite] {result.get('experiment')} seed={result.get('seed')} status={result.get('status')} "
        f"test_acc={acc_text} params={result.get('num_params')} -> {run_dir.result}"
    )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``launch/train.py``: a bad input is a short error (:func:`lit_dendrite.errors.run_command`)."""
    run_command(lambda: train(sys.argv[1:] if args is None else args), COMMAND)
