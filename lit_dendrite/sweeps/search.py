"""Hyperparameter search with Optuna: the ``search:`` section of a sweep file, one study per condition.

A sweep file with a ``search:`` section (instead of grid/zip/random) tunes every experiment (condition) of the
sweep with its own Optuna study over the same space with the same trial budget, then retrains each condition's
best configuration on the sweep's ``seeds`` (the final step; those runs are what the report compares)::

    search:
      trials: 24                      # per condition
      sampler: tpe                    # tpe (default), random, grid (choice axes only), cmaes (numeric axes only)
      seed: 0                         # the sampler's seed (the same for every condition)
      trial_seed: 0                   # seed_everything of every trial (session I is then shared by the trials)
      objective: sessions.II_joint.best_val_loss   # a number of the run record (default); never a test metric
      direction: minimize
      pruner: median                  # none (default), median or successive_halving, fed session II's val/loss
                                      # per epoch; with options: {median: {n_startup_trials: 5, n_warmup_steps: 3}}
      storage: null                   # an RDB URL (sqlite:///..., postgresql://...); default: a journal file
      space:
        model.lr: {loguniform: [1.0e-4, 1.0e-2]}
        model.net.init_args.dropout: {uniform: [0.0, 0.6]}
        model.net.init_args.widths: {choice: [[32, 32, 32], [64, 64, 64], [128, 128, 128]]}
        data.batch_size: {int: [50, 400]}

The studies live in ``<sweep dir>/search/`` (``optuna.journal``, Optuna's journal file storage, safe on a shared
file system) with ``search.json``, what was submitted; trial ``n`` of a condition trains the ordinary run directory
``<sweep dir>/search/<experiment>/trial=<n>``. This module imports no torch: ``status`` stays quick.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lit_dendrite.io import read_json
from lit_dendrite.runs import NAME_SIGNIFICANT_DIGITS, SEARCH_DIR, name_value, run_name

SEARCH_KEYS = ("trials", "sampler", "seed", "trial_seed", "objective", "direction", "pruner", "storage", "space")
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("none", "median", "successive_halving")
DIRECTIONS = ("minimize", "maximize")
SPACE_KINDS = ("loguniform", "uniform", "int", "choice")
DEFAULT_OBJECTIVE = "sessions.II_joint.best_val_loss"
JOURNAL_FILE = "optuna.journal"
SEARCH_FILE = "search.json"
ASK_LOCK = ".ask.lock"
TRIAL_AXIS = "trial"
SESSION_I_FREE = (
    "model.lr",
    "model.net.init_args.dropout",
    "model.net.init_args.widths",
    "model.net.init_args.match_neuron",
    "data.batch_size",
    "protocol.patience",
    "protocol.joint_epochs",
    "protocol.frozen_epochs",
    "trainer.max_epochs",
)
"""Keys that leave session I unchanged (its inner net is built before the outer layers, from the seed alone, and
trained with the protocol's pretraining settings): a search over these only reuses one session I per condition."""


class SearchSpecError(ValueError):
    """A ``search:`` section that cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class SearchSpec:
    """A parsed ``search:`` section (see the module docstring)."""

    trials: int
    space: dict[str, dict[str, Any]]
    sampler: str = "tpe"
    seed: int = 0
    trial_seed: int = 0
    objective: str = DEFAULT_OBJECTIVE
    direction: str = "minimize"
    pruner: str = "none"
    pruner_args: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None

    @property
    def reuses_session_i(self) -> bool:
        """Whether every searched key leaves session I unchanged, so that trials share one session I."""
        return all(key in SESSION_I_FREE for key in self.space)

    @property
    def monitored_session(self) -> str:
        """The session whose per-epoch validation metric feeds the pruner: the objective's, else session II."""
        parts = self.objective.split(".")
        return parts[1] if parts[0] == "sessions" and len(parts) > 2 else "II_joint"

    @property
    def monitor(self) -> str:
        """The per-epoch validation metric reported to the pruner, in the study's direction."""
        return "val/loss" if self.direction == "minimize" else "val/acc"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fail(where: str, message: str) -> SearchSpecError:
    return SearchSpecError(f"{where}: search.{message}")


def _check_axis(where: str, key: Any, distribution: Any) -> dict[str, Any]:
    if not isinstance(key, str) or not key or key.startswith("-"):
        raise _fail(where, f"space: key {key!r} must be a LightningCLI key without '--', e.g. model.lr")
    if key == "seed_everything":
        raise _fail(where, "space: seed_everything is not a hyperparameter; the final step trains the sweep's seeds")
    if not isinstance(distribution, dict) or len(distribution) != 1 or next(iter(distribution)) not in SPACE_KINDS:
        raise _fail(
            where,
            f"space.{key} must be one of {{loguniform: [lo, hi]}}, {{uniform: [lo, hi]}}, {{int: [lo, hi]}}, "
            f"{{choice: [values]}}; got {distribution!r}",
        )
    kind, arg = next(iter(distribution.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg or any(isinstance(v, dict) for v in arg):
            raise _fail(where, f"space.{key}.choice must be a non-empty list of values (no mappings), got {arg!r}")
        labels = [name_value(v) for v in arg]
        if len(set(labels)) != len(labels):
            raise _fail(where, f"space.{key}.choice lists a value twice: {arg!r}")
        return distribution
    numbers = isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg)
    if not numbers or not arg[0] < arg[1] or (kind == "loguniform" and arg[0] <= 0):
        raise _fail(
            where, f"space.{key}.{kind} needs [low, high] with low < high (low > 0 for loguniform), got {arg!r}"
        )
    if kind == "int" and not all(isinstance(v, int) and not isinstance(v, bool) for v in arg):
        raise _fail(where, f"space.{key}.int needs integer bounds, got {arg!r}")
    return distribution


def parse_search(where: str, spec: Any) -> SearchSpec:
    """Validate a ``search:`` section (``where`` names the file in errors)."""
    if not isinstance(spec, dict):
        raise _fail(where, "must be a mapping with at least `trials` and `space` (see docs/tuning.md)")
    if unknown := sorted(set(spec) - set(SEARCH_KEYS)):
        raise _fail(where, f"{unknown}: unknown key(s); allowed: {list(SEARCH_KEYS)}")
    trials = spec.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise _fail(where, f"trials must be a positive integer (trials per condition), got {trials!r}")
    space = spec.get("space")
    if not isinstance(space, dict) or not space:
        raise _fail(where, "space must map each searched LightningCLI key to a distribution")
    space = {key: _check_axis(where, key, value) for key, value in space.items()}
    pruner, pruner_args = spec.get("pruner") or "none", {}
    if isinstance(pruner, dict) and len(pruner) == 1 and isinstance(next(iter(pruner.values())) or {}, dict):
        pruner, pruner_args = next(iter(pruner)), dict(next(iter(pruner.values())) or {})
    choices = {
        "sampler": (spec.get("sampler", "tpe"), SAMPLERS),
        "pruner": (pruner, PRUNERS),
        "direction": (spec.get("direction", "minimize"), DIRECTIONS),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise _fail(
                where,
                f"{name} must be one of {list(allowed)}, got {value!r}"
                + (" (a pruner may carry its options: {median: {n_startup_trials: 5}})" if name == "pruner" else ""),
            )
    for name in ("seed", "trial_seed"):
        if not isinstance(spec.get(name, 0), int) or isinstance(spec.get(name, 0), bool):
            raise _fail(where, f"{name} must be an integer, got {spec[name]!r}")
    objective = spec.get("objective", DEFAULT_OBJECTIVE)
    if not isinstance(objective, str) or not objective:
        raise _fail(where, f"objective must name a number of the run record, e.g. {DEFAULT_OBJECTIVE}")
    if "test" in objective.lower():
        raise _fail(
            where,
            f"objective {objective!r} is a test metric: tuning on the test set makes the final comparison "
            f"meaningless; use a validation number such as {DEFAULT_OBJECTIVE}",
        )
    storage = spec.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise _fail(where, f"storage must be an RDB URL such as sqlite:///studies.db (or null), got {storage!r}")
    sampler = choices["sampler"][0]
    kinds = {next(iter(d)) for d in space.values()}
    if sampler == "grid" and kinds != {"choice"}:
        raise _fail(where, "sampler grid needs every space axis to be a {choice: [...]}; use tpe or random instead")
    if sampler == "cmaes" and "choice" in kinds:
        raise _fail(where, "sampler cmaes searches numeric axes only (no choice axes); use tpe for mixed spaces")
    return SearchSpec(
        trials=trials,
        space=space,
        sampler=sampler,
        seed=spec.get("seed", 0),
        trial_seed=spec.get("trial_seed", 0),
        objective=objective,
        direction=choices["direction"][0],
        pruner=pruner,
        pruner_args=pruner_args,
        storage=storage,
    )


def search_dir(sweep_dir: Path) -> Path:
    """Where a sweep's studies, ``search.json`` and trial run directories live."""
    return Path(sweep_dir) / SEARCH_DIR


def trial_dir(sweep_dir: Path, experiment: str, number: int) -> Path:
    """The run directory of trial ``number`` of a condition: ``search/<experiment>/trial=<number>``."""
    return search_dir(sweep_dir) / experiment / run_name([(TRIAL_AXIS, str(number))])


def study_name(sweep: str, experiment: str) -> str:
    """A condition's study: one per experiment of the sweep (the sweep's name keeps an RDB's studies apart)."""
    return f"{sweep}/{experiment}"


def _storage(spec: SearchSpec, sweep_dir: Path) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if spec.storage is not None:
        return optuna.storages.RDBStorage(spec.storage)
    path = search_dir(sweep_dir) / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def sampler(spec: SearchSpec, draw: int = 0) -> Any:
    """The study's sampler, seeded with ``seed + draw``: a worker asks for trial ``draw`` with a sampler made for it
    (samplers live in a process, studies in the storage, so one seed alone would draw the same values each time).
    The grid sampler keeps ``seed``: it numbers the grid's points in an order drawn from its seed, and picks a point
    not yet visited itself."""
    return _sampler(spec, spec.seed if spec.sampler == "grid" else spec.seed + draw)


def _sampler(spec: SearchSpec, seed: int) -> Any:
    import optuna

    if spec.sampler == "grid":

        class BudgetGridSampler(optuna.samplers.GridSampler):
            """Optuna's grid sampler without its ``study.stop()`` once the grid is covered (allowed only inside
            ``study.optimize``, which workers do not use): the trial budget ends a study."""

            def after_trial(self, *args: Any) -> None:
                return None

        grid = {key: list(range(len(d["choice"]))) for key, d in spec.space.items()}
        return BudgetGridSampler(grid, seed=seed)
    samplers = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
    }
    return samplers[spec.sampler](seed=seed)


def _pruner(spec: SearchSpec) -> Any:
    import optuna

    pruner = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    }[spec.pruner]
    try:
        return pruner(**spec.pruner_args)
    except TypeError as error:
        raise SearchSpecError(f"search.pruner {spec.pruner}: {error}; see optuna.pruners for its options") from None


def open_study(spec: SearchSpec, sweep_dir: Path, sweep: str, experiment: str) -> Any:
    """A condition's study, created on first use and continued after (a rerun adds to the same study)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        storage=_storage(spec, sweep_dir),
        study_name=study_name(sweep, experiment),
        sampler=sampler(spec),
        pruner=_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )


def suggest(trial: Any, spec: SearchSpec) -> dict[str, Any]:
    """The trial's value of every searched key (a trial asked again gives the values it was given first). Choices
    are stored in the study by their index (Optuna's categorical values must be scalars; ours may be lists)."""
    values = {}
    for key, distribution in spec.space.items():
        kind, arg = next(iter(distribution.items()))
        if kind == "choice":
            values[key] = arg[trial.suggest_categorical(key, list(range(len(arg))))]
        elif kind == "int":
            values[key] = trial.suggest_int(key, arg[0], arg[1])
        else:
            value = trial.suggest_float(key, float(arg[0]), float(arg[1]), log=kind == "loguniform")
            values[key] = float(f"{value:.{NAME_SIGNIFICANT_DIGITS}g}")  # as the run's config and name show it
    return values


def params_values(params: dict[str, Any], spec: SearchSpec) -> dict[str, Any]:
    """A finished trial's stored parameters as the values its run trained with (choices from their index)."""
    values = {}
    for key, distribution in spec.space.items():
        kind, arg = next(iter(distribution.items()))
        value = params[key]
        values[key] = arg[value] if kind == "choice" else value
        if kind in ("uniform", "loguniform"):
            values[key] = float(f"{value:.{NAME_SIGNIFICANT_DIGITS}g}")
    return values


def objective_value(record: dict[str, Any], objective: str) -> float:
    """The number at the dotted path ``objective`` of a run record; a clear error when the record has none."""
    value: Any = record
    for part in objective.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(
                f"the run record has no {objective!r} (missing {part!r}); pick a number the record holds, "
                f"e.g. {DEFAULT_OBJECTIVE}"
            )
        value = value[part]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ValueError(f"the run record's {objective!r} is {value!r}, not a number")
    return float(value)


def counted(trials: list[Any]) -> dict[str, int]:
    """Trials per state name (running, complete, pruned, fail, waiting)."""
    counts: dict[str, int] = {}
    for trial in trials:
        name = trial.state.name.lower()
        counts[name] = counts.get(name, 0) + 1
    return counts


def budget_used(trials: list[Any]) -> int:
    """Trials that count against the budget: finished (complete or pruned) or in progress; a failed trial is
    replaced by a new one (up to the budget in failures), so that every condition ends with the same number."""
    counts = counted(trials)
    return sum(counts.get(state, 0) for state in ("complete", "pruned", "running", "waiting"))


def budget_left(trials: list[Any], spec: SearchSpec) -> int:
    """Trials still to ask for; 0 also once as many trials failed as the budget (something is broken)."""
    failed = counted(trials).get("fail", 0)
    return 0 if failed >= spec.trials else max(0, spec.trials - budget_used(trials))


def best_trial(study: Any) -> Any | None:
    """The study's best complete trial, or None while there is none."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial if complete else None


def search_state(
    sweep_dir: Path, sweep: str, spec: SearchSpec, experiments: list[str]
) -> dict[str, dict[str, Any]] | None:
    """``{experiment: {"counts", "left", "best"}}`` of each condition's study (``best``: the best trial or None), or
    None while a study does not exist yet (asking writes nothing: a dry run leaves a database as it was)."""
    import optuna

    if spec.storage is None and not (search_dir(sweep_dir) / JOURNAL_FILE).is_file():
        return None
    state = {}
    for experiment in experiments:
        try:
            study = optuna.load_study(study_name=study_name(sweep, experiment), storage=_storage(spec, sweep_dir))
        except KeyError:  # no such study
            return None
        trials = study.get_trials(deepcopy=False)
        state[experiment] = {"counts": counted(trials), "left": budget_left(trials, spec), "best": best_trial(study)}
    return state


def read_search(sweep_dir: Path) -> tuple[SearchSpec, list[str]] | None:
    """The search a sweep directory holds (as submitted, ``search/search.json``): its spec and conditions."""
    data = read_json(search_dir(sweep_dir) / SEARCH_FILE)
    return None if data is None else (SearchSpec(**data["search"]), list(data["experiments"]))


def search_lines(sweep_dir: Path, spec: SearchSpec, state: dict[str, dict[str, Any]] | None) -> list[str]:
    """The search's part of the plan and of ``status``: its settings, then per condition its trials and best."""
    pruner = spec.pruner + (f" {spec.pruner_args}" if spec.pruner_args else "")
    lines = [
        f"search: {spec.trials} trials per condition, sampler {spec.sampler} (seed {spec.seed}), pruner {pruner}, "
        f"{spec.direction} {spec.objective}; studies in {spec.storage or search_dir(sweep_dir)}",
        f"  space: {', '.join(f'{key} {dist}' for key, dist in spec.space.items())}",
    ]
    for experiment, info in (state or {}).items():
        counts = ", ".join(f"{n} {name}" for name, n in sorted(info["counts"].items())) or "none yet"
        best = info["best"]
        shown = "-" if best is None else f"{best.value:.4g} (trial {best.number}: {params_values(best.params, spec)})"
        lines.append(f"  {experiment}: trials {counts}; {info['left']} to ask; best {shown}")
    return lines
