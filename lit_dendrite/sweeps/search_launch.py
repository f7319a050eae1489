"""Submitting a sweep with a ``search:`` section: its workers while a condition's study has trials left, then (the
same command again) the final step, each condition's best configuration on the sweep's seeds as ordinary runs.

Before any worker is submitted the trials' configurations are parsed at the corners of the space (every choice,
each numeric axis at its bounds) and the data sets checked; trials left running by a worker that ended without a
requeue are failed (the budget asks for others); a search whose workers are still queued or running is left to them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_dendrite.io import read_json, write_json_atomic
from lit_dendrite.runs import SEARCH_DIR, RunDir
from lit_dendrite.sweeps.backends import cluster_backend
from lit_dendrite.sweeps.cluster import ClusterConfig, use_term_as_preempt_signal
from lit_dendrite.sweeps.job import record_failure
from lit_dendrite.sweeps.launch import Submission, check_configs, submit_sweep
from lit_dendrite.sweeps.plan import data_needs, missing_data, refusal, run_data
from lit_dendrite.sweeps.search import (
    SEARCH_FILE,
    TRIAL_AXIS,
    SearchSpec,
    open_study,
    params_values,
    search_dir,
    search_lines,
    search_state,
)
from lit_dendrite.sweeps.search_worker import RUN_DIR_ATTR, SearchWorker, trial_args
from lit_dendrite.sweeps.spec import PlannedRun, Sweep, SweepError
from lit_dendrite.sweeps.state import JOBS, LOGS, MANIFEST, job_states, record_jobs

SEED_KEY = "seed_everything"


def condition_args(sweep: Sweep, extra: list[str]) -> dict[str, list[str]]:
    """Each experiment's ``train`` arguments without seed and run directory (its first final run's), plus ``extra``."""
    conditions: dict[str, list[str]] = {}
    for run in sweep.runs:
        if run.experiment not in conditions:
            fixed = dataclasses.replace(run, overrides=tuple(o for o in run.overrides if o[0] != SEED_KEY))
            args = fixed.train_args(Path("."), extra=extra)
            index = args.index("--run_dir")
            conditions[run.experiment] = args[:index] + args[index + 2 :]
    return conditions


def corners(spec: SearchSpec) -> list[dict[str, Any]]:
    """Points of the space that every trial's configuration is checked at: each choice, each bound."""
    points = []
    for key, distribution in spec.space.items():
        points += [{key: value} for value in next(iter(distribution.values()))]
    return points


def _with_values(run: PlannedRun, values: dict[str, Any]) -> PlannedRun:
    """``run`` with ``values`` in place of its own overrides of those keys (its seed, unless given, stays last)."""
    overrides = tuple((k, v) for k, v in run.overrides if k not in values)
    seed = [(k, v) for k, v in overrides if k == SEED_KEY]
    return dataclasses.replace(run, overrides=(*[o for o in overrides if o[0] != SEED_KEY], *values.items(), *seed))


def planned_sweep(sweep: Sweep) -> Sweep:
    """The sweep as a plan of runs for the dry run and its cost: every condition's trials (counted as full runs, an
    upper bound where trials are pruned) in ``search/<experiment>/trial=<n>``, then the final runs."""
    spec = sweep.search
    first_runs: dict[str, PlannedRun] = {}
    for run in sweep.runs:
        first_runs.setdefault(run.experiment, run)
    trials = []
    for experiment, run in first_runs.items():
        seeded = _with_values(run, {SEED_KEY: spec.trial_seed})
        for number in range(spec.trials):
            axes = ((TRIAL_AXIS, str(number)),)
            trials.append(dataclasses.replace(seeded, experiment=f"{SEARCH_DIR}/{experiment}", axes=axes))
    return dataclasses.replace(sweep, runs=(*trials, *sweep.runs), search=None)


def final_sweep(sweep: Sweep, state: dict[str, dict[str, Any]]) -> Sweep:
    """The final step: each condition's runs on the sweep's seeds with its best trial's values."""
    if empty := [name for name, info in state.items() if info["best"] is None]:
        raise SweepError(
            f"no trial of {empty} completed (see `python launch/sweep.py status`): nothing to retrain; fix the failing "
            "trials' error and delete their study's failed trials, or raise search.trials"
        )
    best = {name: params_values(info["best"].params, sweep.search) for name, info in state.items()}
    runs = tuple(_with_values(run, best[run.experiment]) for run in sweep.runs)
    return dataclasses.replace(sweep, runs=runs, search=None)


def fail_abandoned_trials(sweep_dir: Path, sweep: str, spec: SearchSpec, experiments: list[str]) -> int:
    """Fail the trials left running by workers that ended without being requeued (none is live); returns how many."""
    import optuna

    failed = 0
    for experiment in experiments:
        study = open_study(spec, sweep_dir, sweep, experiment)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            run_dir = Path(trial.user_attrs.get(RUN_DIR_ATTR, ""))
            if run_dir.name and not RunDir(run_dir).result.exists():
                why = "the worker training this trial ended mid-trial without being requeued"
                record_failure(run_dir, [], error=why, log=None, trial=trial.number)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            failed += 1
    return failed


def submit_search(
    sweep: Sweep,
    cluster: str,
    config: ClusterConfig,
    out: Path,
    dry_run: bool = False,
    max_parallel: int | None = None,
    parse: Callable[[list[str]], Any] | None = None,
    echo: Callable[[str], None] = print,
    **submit_options: Any,
) -> Submission:
    """Submit the search's workers (at most ``max_parallel``, or the config's ``array_parallelism``, each training
    one trial after another) or, once every study has its budget, the final runs (see :func:`submit_sweep`)."""
    spec, sweep_dir = sweep.search, out.resolve() / sweep.name
    experiments = list(dict.fromkeys(run.experiment for run in sweep.runs))
    state = search_state(sweep_dir, sweep.name, spec, experiments)
    finished = state is not None and all(
        info["left"] == 0 and not info["counts"].get("running") for info in state.values()
    )
    if finished:
        for line in search_lines(sweep_dir, spec, state):
            echo(line)
        echo("search finished: the final step retrains each condition's best configuration on the sweep's seeds")
        return submit_sweep(final_sweep(sweep, state), cluster, config, out, dry_run, max_parallel, parse, echo,
                            **submit_options)  # fmt: skip
    if dry_run:
        submission = submit_sweep(planned_sweep(sweep), cluster, config, out, True, max_parallel, parse, echo,
                                  **submit_options)  # fmt: skip
    backend = cluster_backend(cluster)
    config = dataclasses.replace(config, array_parallelism=max_parallel or config.array_parallelism)
    if config.nodes != 1 or config.tasks_per_node != 1:
        raise SweepError(
            "a search worker trains one trial at a time in one task: set nodes: 1 and tasks_per_node: 1 in the cluster "
            f"config (got {config.nodes} x {config.tasks_per_node}); the final runs may use more with another config"
        )
    conditions = condition_args(sweep, backend.trainer_args(config))
    checked = [trial_args(args, point, spec.trial_seed, Path(name)) for name, args in conditions.items()
               for point in [{}, *corners(spec)]]  # fmt: skip
    parsed = check_configs(checked, parse)
    needs = data_needs({args[-1]: run_data(c) for args, c in zip(checked, parsed)}, None)
    problems = missing_data(needs)
    if dry_run:
        for line in search_lines(sweep_dir, spec, state):
            echo(line)
        echo(f"  checked: {len(checked)} trial configurations at the corners of the space parse")
        echo("  the plan counts every trial as a full run: an upper bound (pruned trials stop early, and trials")
        echo("  share one session I per condition where the searched keys leave it unchanged)")
        workers = min(config.array_parallelism, spec.trials * len(experiments))
        echo(f"  submits {workers} workers (--max-parallel or the cluster config's array_parallelism), not a job per")
        echo("  trial; then the final step: rerun this command once the search has finished (or use --wait)")
        return submission
    backend.check(config)
    if refused := refusal(problems, sweep.path):
        raise SweepError(refused)
    workers = (read_json(sweep_dir / JOBS) or {}).get(SEARCH_DIR)
    if workers is not None and job_states({SEARCH_DIR: workers})[SEARCH_DIR] not in (None, "ENDED"):
        echo(f"search workers still queued or running (job {workers['job_id']}): nothing submitted")
        return Submission(sweep_dir, [], {SEARCH_DIR: "running"}, [], [])
    if state is not None and (abandoned := fail_abandoned_trials(sweep_dir, sweep.name, spec, experiments)):
        echo(f"{abandoned} trial(s) left running by a worker that ended were failed; others replace them")
        state = search_state(sweep_dir, sweep.name, spec, experiments)
    left = sum(info["left"] for info in state.values()) if state else spec.trials * len(experiments)
    submitted = {"sweep": sweep.name, "search": spec.to_dict(), "experiments": experiments, "conditions": conditions}
    write_json_atomic(search_dir(sweep_dir) / SEARCH_FILE, submitted)
    if not (sweep_dir / MANIFEST).exists():
        write_json_atomic(sweep_dir / MANIFEST, {"sweep": sweep.name, "sweep_file": str(sweep.path), "runs": [],
                                                 "evaluate": sweep.evaluate})  # fmt: skip
    count = min(config.array_parallelism, left)
    use_term_as_preempt_signal()
    executor = backend.executor(config, sweep_dir / LOGS / "%j", f"ld-{sweep.name}-search")
    with executor.batch():
        jobs = [executor.submit(SearchWorker(sweep_dir, sweep.name, spec, conditions)) for _ in range(count)]
    record_jobs(sweep_dir, cluster, {SEARCH_DIR: [job.job_id for job in jobs]})
    echo(f"submitted {count} search worker(s) for {left} trials on {cluster}: {' '.join(j.job_id for j in jobs)}")
    backend.after_submit(jobs)
    echo(f"watch:       python launch/sweep.py status {sweep_dir}")
    echo("then rerun this command: once every study has its trials it submits the final runs")
    return Submission(sweep_dir, [], {}, [job.job_id for job in jobs], jobs)
