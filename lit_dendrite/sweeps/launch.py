"""Submitting a sweep: validate everything, skip finished runs, submit the rest as one job array."""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from lit_dendrite.config_files import copy_chain
from lit_dendrite.io import read_json, write_json_atomic
from lit_dendrite.runs import FINISHED, RunDir, RunRecord, config_differences, recorded_config
from lit_dendrite.sweeps.backends import ClusterBackend, cluster_backend
from lit_dendrite.sweeps.cluster import ClusterConfig, use_term_as_preempt_signal
from lit_dendrite.sweeps.cost import DEFAULT_GPU_SPEEDUP, CostUnavailable, Estimate, sweep_estimate
from lit_dendrite.sweeps.evaluation import EvaluateSpecError, check_evaluate, evaluation_state
from lit_dendrite.sweeps.job import TrainRun
from lit_dendrite.sweeps.plan import (
    DataNeed,
    RunData,
    data_lines,
    data_needs,
    missing_data,
    preflight_lines,
    preflight_refused,
    refusal,
    run_data,
    run_kind,
    summary_lines,
)
from lit_dendrite.sweeps.preflight import read_preflight
from lit_dendrite.sweeps.spec import PlannedRun, Sweep, SweepError, load_sweep
from lit_dendrite.sweeps.state import (
    CONFIG_SNAPSHOTS,
    LOGS,
    MANIFEST,
    format_status,
    read_manifest,
    record_jobs,
    run_states,
)

PARSE_ENTRY = "lit_dendrite.cli"
MAX_ERRORS_SHOWN = 5


@dataclass
class Submission:
    """What a call of :func:`submit_sweep` did: the sweep directory, runs submitted and skipped, job ids."""

    sweep_dir: Path
    submitted: list[str]
    skipped: dict[str, str]
    job_ids: list[str]
    jobs: list[submitit.Job]


def run_args(run: PlannedRun, sweep_dir: Path, backend: ClusterBackend, config: ClusterConfig) -> list[str]:
    """The full ``train`` arguments of a run: the backend adds its Trainer settings (devices, nodes, strategy)."""
    return run.train_args(sweep_dir, extra=backend.trainer_args(config))


def _seed(args: list[str]) -> int | None:
    return int(args[args.index("--seed_everything") + 1]) if "--seed_everything" in args else None


def _without_seed_and_dir(args: list[str]) -> tuple[str, ...]:
    """The arguments that can make a config invalid (the sweep itself writes seed and run_dir)."""
    flags = ("--seed_everything", "--run_dir")
    return tuple(a for i, a in enumerate(args) if a not in flags and (i == 0 or args[i - 1] not in flags))


def check_configs(arg_lists: list[list[str]], parse: Callable[[list[str]], Any] | None = None) -> list[Any]:
    """Parse the runs' arguments without training (once per distinct config, seeds aside) and return each run's
    parsed configuration (the same object for runs that differ only in seed and directory); raise one SweepError
    listing the runs that do not parse."""
    parse = parse or importlib.import_module(PARSE_ENTRY).parse
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for args in arg_lists:
        groups.setdefault(_without_seed_and_dir(args), []).append(args)
    failures: dict[str, list[list[str]]] = {}
    parsed: dict[tuple[str, ...], Any] = {}
    for key, runs in groups.items():
        try:
            parsed[key] = parse(runs[0]).config
        except (Exception, SystemExit) as error:  # argparse-style parsers exit on bad arguments
            failures.setdefault(f"{type(error).__name__}: {error}", []).extend(runs)
    if failures:
        count = sum(len(runs) for runs in failures.values())
        shown = "\n".join(
            f"  {error}\n    in {len(runs)} run(s), e.g. {' '.join(runs[0])}"
            for error, runs in list(failures.items())[:MAX_ERRORS_SHOWN]
        )
        raise SweepError(f"{count} run(s) have a config that does not parse; nothing was submitted:\n{shown}")
    return [parsed[_without_seed_and_dir(args)] for args in arg_lists]


def config_mismatches(
    sweep_dir: Path, args: dict[str, list[str]], resolve: Callable[[list[str]], dict[str, Any]] | None = None
) -> dict[str, dict[str, tuple[Any, Any]]]:
    """``{run: differing keys}`` for the runs whose directory holds another configuration than their arguments
    give (resolved once per distinct config, seeds aside)."""
    resolved: dict[tuple[str, ...], dict[str, Any]] = {}
    mismatches = {}
    for run, run_args in args.items():
        recorded = recorded_config(RunDir(sweep_dir / run))
        if recorded is None:
            continue
        key = _without_seed_and_dir(run_args)
        if key not in resolved:
            resolved[key] = (resolve or importlib.import_module(PARSE_ENTRY).resolve)(run_args)
        wanted = {**resolved[key], "seed_everything": _seed(run_args)}
        if differences := config_differences(recorded[0], wanted):
            mismatches[run] = differences
    return mismatches


def snapshot_configs(sweep_dir: Path, args: dict[str, list[str]]) -> dict[str, list[str]]:
    """The runs' arguments with each ``--config`` file replaced by a copy in ``sweep_dir/submitted_configs`` named
    by its content, and the files it extends by copies too: a job reads its experiment config as it was at
    submission, whatever happens to the files while the job waits or runs (an edit, a checkout). Copies are never
    overwritten, so queued jobs keep theirs."""
    copies: dict[Path, Path] = {}
    result = {}
    for run, given in args.items():
        index = given.index("--config") + 1
        snapshot = copy_chain(given[index], sweep_dir / CONFIG_SNAPSHOTS, copies)
        result[run] = [*given[:index], str(snapshot), *given[index + 1 :]]
    return result


def _manifest(sweep: Sweep, args: dict[str, list[str]]) -> dict[str, Any]:
    """The manifest: every run of the sweep with its axes and its arguments as submitted."""
    runs = [
        {"dir": run.relative_dir, "experiment": run.experiment, "axes": dict(run.axes), "args": args[run.relative_dir]}
        for run in sweep.runs
    ]
    return {"sweep": sweep.name, "sweep_file": str(sweep.path), "runs": runs, "evaluate": sweep.evaluate}


def fetch_sweep_data(sweep: Sweep, parse: Callable[[list[str]], Any] | None = None) -> list[DataNeed]:
    """Every data set the jobs of all the sweep's runs read, where they read it (each run's config is parsed, once
    per distinct config)."""
    configs = check_configs([run.train_args(Path(sweep.name)) for run in sweep.runs], parse)
    return data_needs({run.relative_dir: run_data(c) for run, c in zip(sweep.runs, configs)}, sweep.evaluate)


def checked_evaluate(evaluate: dict[str, Any] | None) -> None:
    """:func:`~lit_dendrite.sweeps.evaluation.check_evaluate` as a SweepError (nothing submitted)."""
    if evaluate is None:
        return
    try:
        check_evaluate(evaluate)
    except EvaluateSpecError as error:
        raise SweepError(f"{error}; nothing was submitted") from None


def _to_skip(
    sweep_dir: Path,
    runs: list[str],
    evaluate: dict[str, Any] | None,
    changed: set[str] = frozenset(),
    retry_stalled: bool = False,
) -> dict[str, str]:
    """``{run: why}`` of the runs not to submit: queued or running, or finished and (with an ``evaluate``
    section) evaluated, unless (not queued or running) their directory holds another configuration (``changed``)
    or they stalled and ``retry_stalled`` asks to train them again."""
    skipped = {}
    for run, info in run_states(sweep_dir, runs).items():
        if info["live"]:
            skipped[run] = f"{info['state']}, job {info['job_id']} {info['job_state'].lower()}"
        elif run in changed or (retry_stalled and info["state"] == "stalled"):
            continue
        elif info["state"] == "running":
            skipped[run] = "running"
        elif info["state"] in FINISHED:
            evaluation = evaluation_state(sweep_dir / run, evaluate)
            if evaluation in ("-", "done"):
                skipped[run] = info["state"] + (", evaluated" if evaluation == "done" else "")
    return skipped


def submit_sweep(
    sweep: Sweep,
    cluster: str,
    config: ClusterConfig,
    out: Path,
    dry_run: bool = False,
    max_parallel: int | None = None,
    parse: Callable[[list[str]], Any] | None = None,
    echo: Callable[[str], None] = print,
    overwrite: bool = False,
    resolve: Callable[[list[str]], dict[str, Any]] | None = None,
    verbose: bool = False,
    gpu_speedup: float = DEFAULT_GPU_SPEEDUP,
    force: bool = False,
    retry_stalled: bool = False,
) -> Submission:
    """Validate the sweep, print its plan (:mod:`lit_dendrite.sweeps.plan`: runs per experiment, GPU-hours, the data
    sets the jobs read and which are missing), then submit every run that is neither finished nor queued/running as
    one job array; ``verbose`` adds each run's action (and, in a dry run, its arguments).

    A data set missing where a job will read it (and the job does not download it) is an error naming it and the
    command that fetches it, and nothing is submitted; a dry run reports it in the plan. A run whose directory holds
    another configuration (the sweep's overrides changed) is an error listing each such run and its differing keys,
    and nothing is submitted; with ``overwrite`` those runs' results are discarded and they are trained afresh.
    A stalled run is finished (the same seed would stall again) unless ``retry_stalled``: then the session that
    stalled is trained afresh, after the sessions it finished.
    ``cluster`` names the backend (:mod:`lit_dendrite.sweeps.backends`): ``debug`` runs the jobs in this process
    before returning; ``local`` starts at most ``max_parallel`` background processes that share the runs, each
    taking the next one left. A sweep with a ``search:`` section submits its search workers, or once the search has
    finished its final runs (:mod:`lit_dendrite.sweeps.search_launch`).

    With a preflight of the sweep (:mod:`lit_dendrite.sweeps.preflight`) the plan prices its runs from the measured
    times, and the runs of a kind whose preflight failed are listed with the reason and not submitted (``force``:
    submitted all the same); without one, the plan says so once and how to run it.
    """
    if sweep.search is not None:  # its workers, or its final runs (which come back here without the search)
        from lit_dendrite.sweeps.search_launch import submit_search

        return submit_search(sweep, cluster, config, out, dry_run, max_parallel, parse, echo, overwrite=overwrite,
                             resolve=resolve, verbose=verbose, gpu_speedup=gpu_speedup, force=force,
                             retry_stalled=retry_stalled)  # fmt: skip
    backend = cluster_backend(cluster)
    sweep_dir = out.resolve() / sweep.name
    config = dataclasses.replace(config, array_parallelism=max_parallel or config.array_parallelism)
    if not dry_run:
        backend.check(config)
    args = {run.relative_dir: run_args(run, sweep_dir, backend, config) for run in sweep.runs}
    parsed = dict(zip(args, check_configs(list(args.values()), parse)))
    checked_evaluate(sweep.evaluate)
    mismatches = config_mismatches(sweep_dir, args, resolve)
    skipped = _to_skip(sweep_dir, list(args), sweep.evaluate, set(mismatches), retry_stalled)
    mismatches = {run: keys for run, keys in mismatches.items() if run not in skipped}  # live jobs keep theirs
    preflight = read_preflight(sweep_dir)
    kinds = {run: run_kind(parsed[run], sweep.evaluate) for run in args} if preflight is not None else {}
    refused = preflight_refused(preflight, kinds, force)
    skipped |= refused
    to_submit = [run for run in args if run not in skipped]
    needs = data_needs({run: run_data(parsed[run]) for run in to_submit}, sweep.evaluate)
    problems = missing_data(needs)
    try:
        cost: Estimate | str = sweep_estimate(
            sweep, gpu_speedup=gpu_speedup, preflight=preflight, time_min=config.time_min
        )
    except CostUnavailable as error:
        cost = str(error)
    for line in summary_lines(sweep, sweep_dir, cluster, to_submit, cost, needs, problems):
        echo(line)
    for line in preflight_lines(preflight, set(kinds.values()), sweep.path, cluster, force):
        echo(line)
    width = max(len(run) for run in args)
    for run in args:
        action = f"skip ({skipped[run]})" if run in skipped else "submit"
        if run in mismatches:
            action = f"{'overwrite' if overwrite else 'CONFIG DIFFERS'} ({', '.join(mismatches[run])})"
        if verbose or run in mismatches:
            echo(f"  {run:<{width}}  {action}")
    if mismatches and not overwrite:
        raise SweepError(
            f"{len(mismatches)} run(s) hold another configuration than this sweep now gives (keys listed above); "
            "nothing was submitted. Use another --out for the changed sweep, or pass --overwrite to discard "
            "those runs' results and train them afresh"
        )
    if dry_run:
        if verbose:
            for run in to_submit:
                echo(f"train args of {run}: {' '.join(args[run])}")
        if sweep.evaluate is not None:
            echo(f"each job then evaluates its run: {json.dumps(sweep.evaluate)}")
        if isinstance(cost, Estimate):
            echo("Cost estimate assumptions:")
            for text in cost.assumptions:
                echo(f"  - {text}")
        shown = backend.dry_run_text(config, sweep_dir / LOGS / "%j", f"ld-{sweep.name}", len(to_submit))
        if to_submit and shown is not None:
            echo(shown)
        if not verbose:
            echo("dry run, nothing submitted; add --verbose for each run's action and training arguments")
        return Submission(sweep_dir, to_submit, skipped, [], [])
    if refused := refusal(problems, sweep.path):
        raise SweepError(refused)
    if not to_submit:
        echo("nothing to submit: every run is finished, queued or running")
        return Submission(sweep_dir, [], skipped, [], [])
    args = snapshot_configs(sweep_dir, args)
    write_json_atomic(sweep_dir / MANIFEST, _manifest(sweep, args))
    for run in mismatches:
        RunDir(sweep_dir / run).discard_results()
    for run in to_submit:
        run_dir = RunDir(sweep_dir / run)
        status = (read_json(run_dir.result) or {}).get("status")
        if status == "failed":
            run_dir.result.replace(run_dir.failed_result)
        elif status == "stalled":
            run_dir.retry_stalled()
    jobs, jobs_of_run = _submit(backend, config, sweep.name, sweep_dir, to_submit, args, sweep.evaluate)
    record_jobs(sweep_dir, cluster, jobs_of_run)
    job_ids = [job.job_id for job in jobs]
    echo(f"submitted {len(to_submit)} runs as {len(job_ids)} {cluster} job(s): {' '.join(job_ids)}")
    echo(f"watch:       python launch/sweep.py status {sweep_dir}")
    echo(f"tensorboard: tensorboard --logdir {sweep_dir}")
    echo(f"summary:     python launch/sweep.py collect {sweep_dir}")
    return Submission(sweep_dir, to_submit, skipped, job_ids, jobs)


def _submit(
    backend: ClusterBackend,
    config: ClusterConfig,
    name: str,
    sweep_dir: Path,
    runs: list[str],
    args: dict[str, list[str]],
    evaluate: dict[str, Any] | None,
) -> tuple[list[submitit.Job], dict[str, list[str]]]:
    """Submit the runs; returns the jobs and ``{run: the ids of the jobs that may train it}``."""
    use_term_as_preempt_signal()
    executor = backend.executor(config, sweep_dir / LOGS / "%j", f"ld-{name}")
    callables = {run: TrainRun(args[run], sweep_dir / run, evaluate) for run in runs}
    packed = backend.jobs(callables, config, sweep_dir / LOGS)
    with executor.batch():
        jobs = [executor.submit(fn) for _, fn in packed]
    backend.after_submit(jobs)
    jobs_of_run: dict[str, list[str]] = {}
    for job, (group, _) in zip(jobs, packed):
        for run in group:
            jobs_of_run.setdefault(run, []).append(job.job_id)
    return jobs, jobs_of_run


def wait_for(jobs: list[submitit.Job], sweep_dir: Path, timeout_s: float, poll_s: float = 5.0) -> str:
    """Wait until every job has ended (or ``timeout_s`` passed) and return the sweep's status table."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(job.done() for job in jobs):
        time.sleep(poll_s)
    return format_status(sweep_dir)


def submit_evaluation(
    sweep_dir: Path,
    cluster: str,
    config: ClusterConfig,
    sweep_file: Path | None = None,
    dry_run: bool = False,
    max_parallel: int | None = None,
    echo: Callable[[str], None] = print,
) -> Submission:
    """Evaluate the finished runs of an existing sweep as one job array, with the ``evaluate:`` section of
    ``sweep_file`` (default: the sweep file the sweep was submitted from); runs already evaluated with those
    settings, unfinished runs and runs whose job is queued or running are skipped."""
    sweep_dir = sweep_dir.resolve()
    manifest = read_manifest(sweep_dir)
    sweep_file = Path(sweep_file or manifest["sweep_file"])
    evaluate = load_sweep(sweep_file).evaluate
    if evaluate is None:
        raise SweepError(f"sweep file {sweep_file} has no `evaluate:` section; add one (see docs/cluster.md)")
    backend = cluster_backend(cluster)
    config = dataclasses.replace(config, array_parallelism=max_parallel or config.array_parallelism)
    if not dry_run:
        backend.check(config)
    checked_evaluate(evaluate)
    args = {run["dir"]: run["args"] for run in manifest["runs"]}
    states = run_states(sweep_dir, list(args))
    skipped = _to_skip(sweep_dir, list(args), evaluate)
    skipped |= {run: info["state"] for run, info in states.items() if run not in skipped and info["state"] != "done"}
    to_submit = [run for run in args if run not in skipped]
    echo(f"evaluate {sweep_dir} with {sweep_file}: {len(args)} runs, {len(to_submit)} to evaluate")
    for run in args:
        echo(f"  {run}  {'skip (' + skipped[run] + ')' if run in skipped else 'evaluate'}")
    records = {run: RunRecord.read(sweep_dir / run) for run in to_submit}
    data = {run: RunData(record.dataset, str(record.data_root)) for run, record in records.items()}
    needs = data_needs(data, evaluate)
    problems = missing_data(needs)
    for line in data_lines(needs, problems, sweep_file):
        echo(line)
    if dry_run or not to_submit:
        return Submission(sweep_dir, to_submit if dry_run else [], skipped, [], [])
    if refused := refusal(problems, sweep_file):
        raise SweepError(refused)
    write_json_atomic(sweep_dir / MANIFEST, {**manifest, "evaluate": evaluate})
    jobs, jobs_of_run = _submit(backend, config, f"{manifest['sweep']}-eval", sweep_dir, to_submit, args, evaluate)
    record_jobs(sweep_dir, cluster, jobs_of_run)
    job_ids = [job.job_id for job in jobs]
    echo(f"submitted {len(to_submit)} evaluations as {len(job_ids)} {cluster} job(s): {' '.join(job_ids)}")
    echo(f"watch:       python launch/sweep.py status {sweep_dir}")
    return Submission(sweep_dir, to_submit, skipped, job_ids, jobs)
