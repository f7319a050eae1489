"""The job callable submitit runs for one run of a sweep."""

from __future__ import annotations

import importlib
import os
import traceback
from pathlib import Path
from typing import Any

import submitit

from lit_dendrite.io import write_json_atomic
from lit_dendrite.runs import RunDir
from lit_dendrite.sweeps.evaluation import evaluate_trained_run, record_evaluation_error

TRAIN_ENTRY = "lit_dendrite.cli"


def _log_path() -> str | None:
    """This job's submitit log (stderr holds the traceback), when running under a submitit executor that has one."""
    try:
        paths = submitit.JobEnvironment().paths
    except (RuntimeError, KeyError):
        return None
    return str(paths.stderr)


def _is_rank_zero() -> bool:
    return int(os.environ.get("SLURM_PROCID", os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))) == 0


def record_failure(run_dir: Path, args: list[str], status: str = "failed", **details: Any) -> dict[str, Any]:
    """Write (on rank 0) and return the record of a run that ended without a result of its own: ``failed`` with
    the traceback of the exception being handled and this job's log, or another ``status`` with ``details``."""
    result = {"status": status, "run_dir": str(run_dir), "experiment": run_dir.parent.name}
    if status == "failed":
        result |= {"error": traceback.format_exc(), "log": _log_path()}
    result |= {**details, "args": list(args)}
    if _is_rank_zero():
        write_json_atomic(RunDir(run_dir).result, result)
    return result


class TrainRun(submitit.helpers.Checkpointable):
    """Runs ``lit_dendrite.cli.train(args)``, which resumes from whatever the run directory holds, with
    :class:`~lit_dendrite.sweeps.preemption.RestoreSigtermHandler` among the Trainer callbacks; then, with an
    ``evaluate`` section (see :mod:`lit_dendrite.sweeps.evaluation`), evaluates the finished run on rank 0 in
    the same job. A finished run is not trained again, so ``launch/sweep.py evaluate`` submits this same callable.

    Requeueing never depends on state kept here: ``scontrol requeue`` reruns the original pickled callable and
    submitit's time-limit/preemption path reruns what ``checkpoint()`` returns, ``DelayedSubmission(self)``;
    both call ``train`` again, which resumes from the last checkpoint. Nothing is saved in ``checkpoint()`` (a
    ``trainer.save_checkpoint`` there would be a collective only rank 0 enters under DDP).
    A run that raises writes ``{"status": "failed", "error", "log"}`` to its run record and returns it, so
    one failing run never affects another (an evaluation that raises records its error in the run's robustness
    folder instead, and training's result stands); an error raised after ``checkpoint()`` (submitit failing to
    requeue a job that Slurm is already requeueing or cancelling) is an interruption, not a failure, and is not
    recorded.
    """

    def __init__(self, args: list[str], run_dir: str | Path, evaluate: dict[str, Any] | None = None) -> None:
        self.args = list(args)
        self.run_dir = Path(run_dir)
        self.evaluate = evaluate
        self.interrupted = False

    def __call__(self) -> dict[str, Any]:
        self.interrupted = False
        try:
            from lit_dendrite.sweeps.preemption import RestoreSigtermHandler  # Lightning: import after unpickling

            result = importlib.import_module(TRAIN_ENTRY).train(self.args, extra_callbacks=[RestoreSigtermHandler()])
        except Exception:
            if self.interrupted:  # raised by submitit's requeue after checkpoint(): the scheduler owns this job now
                raise
            return record_failure(self.run_dir, self.args)
        if self.evaluate is not None and _is_rank_zero():
            try:
                evaluate_trained_run(self.run_dir, self.evaluate)
            except Exception:
                if self.interrupted:
                    raise
                traceback.print_exc()
                record_evaluation_error(self.run_dir, traceback.format_exc(), _log_path())
        return result

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on time limit or preemption (rank 0): rerun this same callable after the requeue."""
        self.interrupted = True
        return submitit.helpers.DelayedSubmission(self)
