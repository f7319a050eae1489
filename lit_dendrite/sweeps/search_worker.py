"""A search worker: the job callable of a search's array. It asks the condition studies for a trial, trains it as an
ordinary run directory (configuration, lock, resume and record as any run), tells the study the result, and takes
the next, until every condition has its budget.

A worker requeued after a time limit or preemption resumes the trial it holds from ``last.ckpt`` (the trial is
marked with the worker's job id, which a requeue keeps); a pruned trial is recorded as pruned in the study and in
its run record; a trial whose training raised is failed in both and never reused (the budget asks for another).
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from lit_dendrite.io import write_json_atomic
from lit_dendrite.runs import PRETRAIN, PRETRAINED_INNER_FILE, FileLock, RunDir, record_config
from lit_dendrite.sweeps.job import TRAIN_ENTRY, record_failure
from lit_dendrite.sweeps.search import (
    ASK_LOCK,
    TRIAL_AXIS,
    SearchSpec,
    budget_left,
    objective_value,
    open_study,
    sampler,
    search_dir,
    suggest,
    trial_dir,
)
from lit_dendrite.sweeps.spec import cli_value

WORKER_ATTR = "worker"
RUN_DIR_ATTR = "run_dir"
ASK_WAIT_S = 600.0


def worker_id() -> str:
    """This job's id as the scheduler keeps it across requeues (``<array>_<index>`` on Slurm), else the process."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except (RuntimeError, KeyError):
        return f"pid-{os.getpid()}"


def trial_args(base: list[str], values: dict[str, Any], seed: int, run_dir: Path) -> list[str]:
    """The ``train`` arguments of a trial: the condition's arguments, the trial's values, its seed and directory."""
    args = list(base)
    for key, value in values.items():
        args += [f"--{key}", cli_value(value)]
    return [*args, "--seed_everything", str(seed), "--run_dir", str(run_dir)]


def reuse_pretraining(run_dir: Path, write_config: Callable[[], None]) -> str | None:
    """Give a new trial's run directory the session I that another trial of its condition finished (the searched
    keys leave it unchanged), with ``reused_from`` in its summary; returns where it came from, or None (none yet,
    or the run directory has started). ``write_config`` writes the trial's configuration first: a directory that
    holds a session I and no configuration is refused by the training command."""
    target = RunDir(run_dir)
    if target.config.exists() or target.session(PRETRAIN).summary.exists() or not run_dir.parent.is_dir():
        return None
    for other in sorted(run_dir.parent.iterdir()):
        source = RunDir(other).session(PRETRAIN)
        summary = source.read_summary() if other != run_dir and other.is_dir() else None
        if summary is None:
            continue
        origin = summary.get("reused_from") or other.relative_to(run_dir.parent.parent).as_posix()
        write_config()
        session = target.session(PRETRAIN)
        session.path.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.path / PRETRAINED_INNER_FILE, session.path / PRETRAINED_INNER_FILE)
        write_json_atomic(session.summary, {**summary, "reused_from": origin})  # the summary last: session done
        return origin
    return None


class SearchWorker(submitit.helpers.Checkpointable):
    """Trains trials of the sweep's condition studies until none is left to ask for. ``conditions`` maps each
    experiment to its ``train`` arguments without seed and run directory. Returns ``{trial dir: its record}`` of
    the trials it trained."""

    def __init__(self, sweep_dir: Path, sweep: str, spec: SearchSpec, conditions: dict[str, list[str]]) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.sweep = sweep
        self.spec = spec
        self.conditions = conditions
        self.current: tuple[str, int] | None = None
        self.results: dict[str, Any] = {}
        self.interrupted = False

    def __call__(self) -> dict[str, Any]:
        self.interrupted = False
        while (picked := self.current or self._held() or self._ask()) is not None:
            self.current = picked
            experiment, number = picked
            self.results[f"{experiment}/{TRIAL_AXIS}={number}"] = self._train(experiment, number)
            self.current = None
        return self.results

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on time limit or preemption: rerun this worker, with the trial it holds, after the
        requeue (an error training raises now is an interruption, not the trial's failure)."""
        self.interrupted = True
        return submitit.helpers.DelayedSubmission(self)

    def _studies(self) -> dict[str, Any]:
        return {name: open_study(self.spec, self.sweep_dir, self.sweep, name) for name in self.conditions}

    def _held(self) -> tuple[str, int] | None:
        """A running trial marked with this worker's job id: the trial of a job requeued by the scheduler (which
        reruns the callable as first submitted, without ``current``)."""
        import optuna

        me = worker_id()
        for experiment, study in self._studies().items():
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if trial.user_attrs.get(WORKER_ATTR) == me:
                    return experiment, trial.number
        return None

    def _ask(self) -> tuple[str, int] | None:
        """A new trial of the condition with the fewest trials (so conditions progress together), or None when
        every condition has its budget; under a lock so that workers never ask beyond a budget."""
        with FileLock(search_dir(self.sweep_dir) / ASK_LOCK, "another worker is asking for a trial", ASK_WAIT_S):
            studies = self._studies()
            left = {name: budget_left(study.get_trials(deepcopy=False), self.spec) for name, study in studies.items()}
            open_conditions = [name for name in studies if left[name] > 0]
            if not open_conditions:
                return None
            experiment = max(open_conditions, key=lambda name: left[name])
            study = studies[experiment]
            study.sampler = sampler(self.spec, draw=len(study.get_trials(deepcopy=False)))
            trial = study.ask()
            suggest(trial, self.spec)
            trial.set_user_attr(WORKER_ATTR, worker_id())
            trial.set_user_attr(RUN_DIR_ATTR, trial_dir(self.sweep_dir, experiment, trial.number).as_posix())
            return experiment, trial.number

    def _train(self, experiment: str, number: int) -> dict[str, Any]:
        """Train one trial into its run directory and tell its study the result (pruned, failed, or the objective)."""
        import optuna

        from lit_dendrite.sweeps.preemption import RestoreSigtermHandler
        from lit_dendrite.sweeps.pruning import TrialPruning

        study = open_study(self.spec, self.sweep_dir, self.sweep, experiment)
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        trial = optuna.trial.Trial(study, trial_id)
        values = suggest(trial, self.spec)
        run_dir = trial_dir(self.sweep_dir, experiment, number)
        args = trial_args(self.conditions[experiment], values, self.spec.trial_seed, run_dir)
        print(f"[lit_dendrite] trial {number} of {experiment}: {values} -> {run_dir}", flush=True)
        if self.spec.reuses_session_i:
            training = importlib.import_module(TRAIN_ENTRY)

            def write_config() -> None:
                record_config(RunDir(run_dir), training.resolved_config(training.parse(args)))

            if (origin := reuse_pretraining(run_dir, write_config)) is not None:
                reused = f"[lit_dendrite] session I reused from {origin} (the searched keys leave it unchanged)"
                print(reused, flush=True)
        pruning = TrialPruning(trial, self.spec.monitored_session, self.spec.monitor)
        try:
            train = importlib.import_module(TRAIN_ENTRY).train
            record = train(args, extra_callbacks=[RestoreSigtermHandler(), pruning])
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return record_failure(run_dir, args, status="pruned", reason=str(pruned), trial=number)
        except Exception:
            if self.interrupted:  # submitit's requeue after checkpoint(): the trial resumes in the requeued job
                raise
            record = record_failure(run_dir, args, trial=number)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"[lit_dendrite] trial {number} of {experiment} failed:\n{record['error']}", file=sys.stderr)
            return record
        if record.get("status") == "diverged":  # a real outcome of these values: the worst, not a failure
            study.tell(trial, float("inf") if self.spec.direction == "minimize" else float("-inf"))
            return record
        try:
            value = objective_value(record, self.spec.objective)
        except (KeyError, ValueError) as error:  # the run stands; the study cannot use it
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            print(f"[lit_dendrite] trial {number} of {experiment}: {error}", file=sys.stderr)
            return {**record, "search_error": str(error)}
        study.tell(trial, value)
        return record
