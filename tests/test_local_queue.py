"""--cluster local: its processes share one queue of the runs (none idles while runs wait, no run is taken twice,
a requeued process resumes the run it holds), and a run shared by several jobs is live, and cancelled, through
any of them."""

from __future__ import annotations

import contextlib
import functools
import json
import pickle
from pathlib import Path
from typing import ClassVar

from lit_dendrite.sweeps.backends import ClusterBackend, RunQueue, cluster_backend, register_backend
from lit_dendrite.sweeps.cluster import ClusterConfig
from lit_dendrite.sweeps.state import MANIFEST, cancel_jobs, record_jobs, run_states

RUNS = ["long/seed=1", "short/seed=1", "short/seed=2", "short/seed=3"]


def _log_call(log: Path, run: str) -> str:
    """A run's job callable: appends the run to ``log`` (picklable, like a sweep's)."""
    with log.open("a") as file:
        file.write(run + "\n")
    return run


def _queues(tmp_path: Path, runs: dict, processes: int = 2) -> list[RunQueue]:
    packed = cluster_backend("local").jobs(runs, ClusterConfig(array_parallelism=processes), tmp_path / "logs")
    assert all(listed == list(runs) for listed, _ in packed), "every process may take every run"
    return [queue for _, queue in packed]


def test_a_local_process_takes_the_next_run_left_while_another_is_busy(tmp_path: Path) -> None:
    """The first process trains the long run; meanwhile the second takes every other run, in the sweep's order
    (dealt round-robin, the first process would have kept short/seed=2 waiting behind the long run)."""
    log = tmp_path / "calls.txt"
    runs = {run: functools.partial(_log_call, log, run) for run in RUNS}
    first, second = _queues(tmp_path, runs)
    taken_by_second = {}

    def long_run() -> str:
        taken_by_second.update(second())  # the second process runs while the first is busy
        return _log_call(log, RUNS[0])

    first.runs = {**runs, RUNS[0]: long_run}
    assert first() == {RUNS[0]: RUNS[0]}
    assert taken_by_second == {run: run for run in RUNS[1:]}
    assert sorted(log.read_text().split()) == sorted(RUNS), "every run once"

    again = _queues(tmp_path, runs, processes=8)
    assert len(again) == len(RUNS), "no more processes than runs"
    assert list(again[0]()) == RUNS, "a new submission's claims are its own"


class _Interruptible:
    """A run whose first call is interrupted (the scheduler's signal arrives mid-run)."""

    def __init__(self, log: Path, run: str) -> None:
        self.log, self.run, self.interrupted, self.calls = log, run, False, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt("the job is being requeued")
        return _log_call(self.log, self.run)

    def checkpoint(self) -> None:
        self.interrupted = True


def test_a_requeued_local_process_resumes_the_run_it_holds_and_keeps_its_results(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    runs = {RUNS[0]: functools.partial(_log_call, log, RUNS[0]), RUNS[1]: _Interruptible(log, RUNS[1])}
    (queue,) = _queues(tmp_path, runs, processes=1)
    with contextlib.suppress(KeyboardInterrupt):
        queue()
    resubmitted = pickle.loads(pickle.dumps(queue.checkpoint()))  # as submitit writes it for the requeue
    assert queue.runs[RUNS[1]].interrupted, "the run in progress is told that it is interrupted"
    assert resubmitted.function.results == {RUNS[0]: RUNS[0]}
    assert resubmitted.result() == {RUNS[0]: RUNS[0], RUNS[1]: RUNS[1]}
    assert log.read_text().split() == [RUNS[0], RUNS[1]], "the finished run is not run again"


def test_a_run_shared_by_several_jobs_is_live_while_one_lives_and_cancel_stops_only_the_live_ones(
    tmp_path: Path, backend_registry: dict
) -> None:
    cancelled: list[list[str]] = []

    @register_backend
    class Pair(ClusterBackend):
        name = "pair"
        alive: ClassVar[dict[str, str]] = {"7": "ENDED", "8": "RUNNING"}

        def job_states(self, job_ids: list[str]) -> dict[str, str | None]:
            return {job_id: self.alive[job_id] for job_id in job_ids}

        def cancel(self, job_ids: list[str]) -> None:
            cancelled.append(job_ids)

    (tmp_path / MANIFEST).write_text(json.dumps({"name": "sweep", "runs": [{"dir": run} for run in RUNS[:2]]}))
    record_jobs(tmp_path, "pair", {run: ["7", "8"] for run in RUNS[:2]})
    states = run_states(tmp_path, RUNS[:2])
    assert [(info["live"], info["job_state"], info["job_id"]) for info in states.values()] == [
        (True, "RUNNING", "7,8")
    ] * 2
    assert cancel_jobs(tmp_path) == {"8": RUNS[:2]}
    assert cancelled == [["8"]]
    Pair.alive = {"7": "ENDED", "8": "ENDED"}
    assert not run_states(tmp_path, RUNS[:1])[RUNS[0]]["live"], "both jobs ended: the run is resubmitted"
