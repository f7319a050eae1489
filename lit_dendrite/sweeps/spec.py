"""Sweep files: base experiment configs and axes (grid, zip, seeds, random search) expanded into runs.

A sweep file (YAML, see ``configs/sweep/``)::

    name: paper                   # optional, defaults to the file's stem
    experiments:
      - mlp_mnist_2arg                          # a config name (configs/experiment/) or path
      - configs/experiment/cnn_mnist_relu.yaml
      - {experiment: cnn_mnist_2arg, seeds: [1], overrides: {trainer.max_epochs: 2}}   # its own seeds/overrides
    seeds: [1, 2, 3]
    overrides: {trainer.max_epochs: 5}          # the same for every run (an experiment's own win)
    grid: {model.lr: [1.0e-3, 3.0e-4]}          # cartesian product
    zip:                                        # groups of axes varied together
      - {model.net.init_args.widths: [[64], [128]], model.net.init_args.dropout: [0.0, 0.1]}
    random:                                     # random search: `trials` draws of every axis
      trials: 8
      seed: 0
      axes:
        model.lr: {loguniform: [1.0e-4, 1.0e-2]}
        model.net.init_args.dropout: {choice: [0.0, 0.1, 0.2]}
    short_names: {model.net.init_args.inner_hidden: inner}
    search:                                     # instead of grid/zip/random: an Optuna study per experiment
      trials: 24                                # (lit_dendrite.sweeps.search, docs/tuning.md); `seeds` then
      space: {model.lr: {loguniform: [1.0e-4, 1.0e-2]}}  # retrain each experiment's best configuration
    evaluate:                                   # robustness of each run, in its job after training
      attacks: {linf_pgd: {n: 1000}}            # (see lit_dendrite.sweeps.evaluation)
      corruptions: {spec: mnist_c, root: data}

An experiment may be a net x data set config (``mlp_mnist``) with the neuron on an axis,
``grid: {model.net.init_args.neuron: [2arg, 1arg, relu]}``: each neuron's net is parameter-matched to the 2-arg net
(docs/configs.md). Axis keys are LightningCLI keys without the leading ``--``. Each run is named by its axis values
with short keys (default: the key's last dotted part), e.g. ``lr=0.001,seed=1``, and lives in
``<out>/<sweep>/<experiment>/<name>``.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_dendrite.errors import ConfigError
from lit_dendrite.io import read_yaml
from lit_dendrite.runs import NAME_SIGNIFICANT_DIGITS, SEED_AXIS, name_value, run_name
from lit_dendrite.sweeps.evaluation import EvaluateSpecError, parse_evaluate
from lit_dendrite.sweeps.search import SearchSpec, SearchSpecError, parse_search

EXPERIMENT_KEYS = ("experiment", "seeds", "overrides")
SWEEP_KEYS = (
    "name", "description", "experiments", "seeds", "overrides", "grid", "zip", "random", "search", "short_names",
    "evaluate",
)  # fmt: skip
RANDOM_KEYS = ("trials", "seed", "axes")
DISTRIBUTIONS = ("loguniform", "uniform", "choice")
SEED_KEY = "seed_everything"


class SweepError(ConfigError):
    """A sweep file that cannot be expanded; the message names the problem and the fix."""


@dataclass(frozen=True)
class PlannedRun:
    """One training run a sweep asks for: which config, which overrides, where it writes."""

    experiment: str
    config: Path
    overrides: tuple[tuple[str, Any], ...]
    axes: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """The run's stable name from its axis values with short keys, e.g. ``lr=0.001,seed=1``."""
        return run_name(self.axes)

    @property
    def relative_dir(self) -> str:
        """Run directory relative to the sweep directory: ``<experiment>/<name>``."""
        return f"{self.experiment}/{self.name}"

    def train_args(self, sweep_dir: Path, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
        """Arguments for ``lit_dendrite.cli.train``: config, experiment name (the job's copy of the config is named
        otherwise), overrides, run directory, then ``extra``."""
        args = ["--config", str(self.config), "--experiment", self.experiment]
        for key, value in self.overrides:
            args += [f"--{key}", cli_value(value)]
        return [*args, "--run_dir", str(sweep_dir / self.relative_dir), *extra]


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file and its runs, in a deterministic order, with its ``evaluate:`` and ``search:`` sections
    (or None). With a search, ``runs`` are the final step's runs with the experiments' own values of the searched
    keys (:mod:`lit_dendrite.sweeps.search_launch` puts each condition's best values in)."""

    name: str
    path: Path
    runs: tuple[PlannedRun, ...]
    evaluate: dict[str, Any] | None = None
    search: SearchSpec | None = None


def cli_value(value: Any) -> str:
    """Format a YAML value as one LightningCLI argument (floats always keep a dot so YAML reads them as floats)."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if exponent and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"
        return text
    return str(value)


def _fail(path: Path, message: str) -> SweepError:
    return SweepError(f"sweep file {path}: {message}")


def _check_axis_values(path: Path, where: str, key: str, values: Any) -> list[Any]:
    if not isinstance(key, str) or not key or key.startswith("-"):
        raise _fail(path, f"{where}: axis key {key!r} must be a LightningCLI key without '--', e.g. model.lr")
    if not isinstance(values, list) or not values:
        raise _fail(path, f"{where}.{key} must be a non-empty list of values, got {values!r}")
    for value in values:
        if isinstance(value, dict):
            raise _fail(path, f"{where}.{key}: mappings are not axis values; make a base config for them instead")
    return values


def _resolve_experiment(path: Path, entry: Any) -> Path:
    """An experiment entry is a config path (absolute or relative to the working directory) or a bare
    name looked up in ``configs/experiment/`` next to the sweep file's folder."""
    if not isinstance(entry, str) or not entry:
        raise _fail(path, f"experiments: entries must be config paths or names, got {entry!r}")
    candidates = [Path(entry)] if ("/" in entry or entry.endswith(".yaml")) else []
    candidates.append(path.parent.parent / "experiment" / f"{entry}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise _fail(path, f"experiment {entry!r} not found (tried {tried}); fix the name or give the config's path")


def _sample(path: Path, rng: random.Random, key: str, distribution: Any) -> Any:
    if not isinstance(distribution, dict) or len(distribution) != 1 or next(iter(distribution)) not in DISTRIBUTIONS:
        raise _fail(
            path,
            f"random.axes.{key} must be one of {{loguniform: [lo, hi]}}, {{uniform: [lo, hi]}}, "
            f"{{choice: [values]}}; got {distribution!r}",
        )
    kind, arg = next(iter(distribution.items()))
    if kind == "choice":
        return rng.choice(_check_axis_values(path, "random.axes", key, arg))
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg)):
        raise _fail(path, f"random.axes.{key}.{kind} needs [low, high] numbers, got {arg!r}")
    low, high = float(arg[0]), float(arg[1])
    if not low < high or (kind == "loguniform" and low <= 0):
        raise _fail(path, f"random.axes.{key}.{kind} needs 0 < low < high (low > 0 for loguniform), got {arg!r}")
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if kind == "loguniform" else rng.uniform(low, high)
    return float(f"{value:.{NAME_SIGNIFICANT_DIGITS}g}")


def _random_points(path: Path, spec: Any) -> list[dict[str, Any]]:
    if spec is None:
        return [{}]
    if not isinstance(spec, dict):
        raise _fail(path, "random must be a mapping with trials, seed and axes")
    unknown = sorted(set(spec) - set(RANDOM_KEYS))
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown} in random; allowed: {list(RANDOM_KEYS)}")
    trials, seed, axes = spec.get("trials"), spec.get("seed", 0), spec.get("axes")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise _fail(path, f"random.trials must be a positive integer, got {trials!r}")
    if not isinstance(axes, dict) or not axes:
        raise _fail(path, "random.axes must map each axis key to a distribution")
    rng = random.Random(seed)
    return [{key: _sample(path, rng, key, dist) for key, dist in axes.items()} for _ in range(trials)]


def _grid_points(path: Path, grid: Any) -> list[dict[str, Any]]:
    if grid is None:
        return [{}]
    if not isinstance(grid, dict):
        raise _fail(path, "grid must map axis keys to lists of values")
    keys = list(grid)
    values = [_check_axis_values(path, "grid", key, grid[key]) for key in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _zip_points(path: Path, groups: Any) -> list[dict[str, Any]]:
    if groups is None:
        return [{}]
    if isinstance(groups, dict):
        groups = [groups]
    if not isinstance(groups, list) or not all(isinstance(g, dict) and g for g in groups):
        raise _fail(path, "zip must be a list of mappings, each mapping axis keys to equally long lists")
    per_group = []
    for group in groups:
        lengths = {key: len(_check_axis_values(path, "zip", key, values)) for key, values in group.items()}
        if len(set(lengths.values())) != 1:
            raise _fail(path, f"zip group axes must have equal lengths, got {lengths}")
        n = next(iter(lengths.values()))
        per_group.append([{key: group[key][i] for key in group} for i in range(n)])
    return [_merge(path, combo) for combo in itertools.product(*per_group)]


def _merge(path: Path, points: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for point in points:
        repeated = set(merged) & set(point)
        if repeated:
            raise _fail(path, f"axis {sorted(repeated)} appears in more than one of grid/zip/random; keep one")
        merged.update(point)
    return merged


def _short_names(path: Path, keys: list[str], given: Any) -> dict[str, str]:
    given = given or {}
    if not isinstance(given, dict):
        raise _fail(path, "short_names must map axis keys to short names")
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise _fail(path, f"short_names for {unknown}, which are not axes; axes are {keys}")
    short = {key: str(given.get(key, SEED_AXIS if key == SEED_KEY else key.rsplit(".", 1)[-1])) for key in keys}
    clashes = sorted({s for s in short.values() if list(short.values()).count(s) > 1})
    if clashes:
        raise _fail(path, f"axes share the short name(s) {clashes}; set distinct ones under short_names")
    return short


def _seeds(path: Path, where: str, seeds: Any) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise _fail(path, f"`{where}` must be a non-empty list of integers, e.g. [1, 2, 3]; got {seeds!r}")
    return seeds


def _overrides(path: Path, where: str, overrides: Any) -> dict[str, Any]:
    if not isinstance(overrides or {}, dict):
        raise _fail(path, f"`{where}` must map LightningCLI keys to values")
    return dict(overrides or {})


def _experiment_entry(
    path: Path, entry: Any, seeds: list[int], overrides: dict[str, Any]
) -> tuple[Path, list[int], dict[str, Any]]:
    """An experiment entry: a config name or path, or a mapping ``{experiment, seeds, overrides}`` whose seeds
    replace the sweep's and whose overrides are applied over the sweep's."""
    if not isinstance(entry, dict):
        return _resolve_experiment(path, entry), seeds, overrides
    unknown = sorted(set(entry) - set(EXPERIMENT_KEYS))
    if unknown or "experiment" not in entry:
        raise _fail(
            path, f"an experiment mapping needs `experiment` and may hold {list(EXPERIMENT_KEYS[1:])}; got {entry}"
        )
    where = f"experiments.{entry['experiment']}"
    entry_seeds = _seeds(path, f"{where}.seeds", entry["seeds"]) if "seeds" in entry else seeds
    entry_overrides = {**overrides, **_overrides(path, f"{where}.overrides", entry.get("overrides"))}
    return _resolve_experiment(path, entry["experiment"]), entry_seeds, entry_overrides


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file and expand it into runs (deterministic, including random search)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist; pass --sweep with a file from configs/sweep/")
    spec = read_yaml(path, "pass a readable sweep file to --sweep")
    if not isinstance(spec, dict):
        raise _fail(path, "must be a YAML mapping with at least `experiments` and `seeds`")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown}; allowed: {list(SWEEP_KEYS)}")
    experiments = spec.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        raise _fail(path, "`experiments` must list at least one experiment config (empty sweep)")
    seeds = _seeds(path, "seeds", spec.get("seeds"))
    overrides = _overrides(path, "overrides", spec.get("overrides"))
    name = str(spec.get("name") or path.stem)
    points = [
        _merge(path, combo)
        for combo in itertools.product(
            _grid_points(path, spec.get("grid")),
            _zip_points(path, spec.get("zip")),
            _random_points(path, spec.get("random")),
        )
    ]
    axis_keys = [*points[0], SEED_KEY]
    short = _short_names(path, axis_keys, spec.get("short_names"))
    runs, seen = [], {}
    for entry in experiments:
        config, entry_seeds, entry_overrides = _experiment_entry(path, entry, seeds, overrides)
        fixed = set(entry_overrides) & set(axis_keys)
        if fixed:
            raise _fail(path, f"{sorted(fixed)} are both fixed overrides and axes; keep one")
        for point in points:
            for seed in entry_seeds:
                values = {**point, SEED_KEY: seed}
                axes = tuple((short[k], name_value(v)) for k, v in values.items())
                run = PlannedRun(config.stem, config, (*entry_overrides.items(), *values.items()), axes)
                if run.relative_dir in seen:
                    raise _fail(
                        path,
                        f"two runs share the directory {run.relative_dir} (duplicate experiments, "
                        "or random choices drawn twice); remove the duplicate or use fewer trials",
                    )
                seen[run.relative_dir] = run
                runs.append(run)
    try:
        evaluate = parse_evaluate(f"sweep file {path}", spec.get("evaluate"))
        search = None if spec.get("search") is None else parse_search(f"sweep file {path}", spec["search"])
    except (EvaluateSpecError, SearchSpecError) as error:
        raise SweepError(str(error)) from None
    if search is not None:
        if mixed := [key for key in ("grid", "zip", "random") if spec.get(key) is not None]:
            raise _fail(path, f"search cannot be combined with {mixed}; search over those keys in search.space")
        for run in runs:
            if fixed := sorted(set(search.space) & {key for key, _ in run.overrides}):
                raise _fail(path, f"{fixed} are both fixed overrides of {run.experiment} and searched; keep one")
    return Sweep(name=name, path=path.resolve(), runs=tuple(runs), evaluate=evaluate, search=search)
