"""Sweep directories on disk: the manifest of runs, submitted jobs, each run's state, and summary.csv.

A run's state, from the most to the least definite evidence:
- ``done`` / ``diverged`` / ``stalled``: its run record says so (written by train);
- ``running`` / ``pending``: its last job is still known to the scheduler (its backend's
  :meth:`~lit_dendrite.sweeps.backends.ClusterBackend.job_states`: squeue for Slurm, the process for local):
  running if it runs, pending if it is queued or being requeued (even after a failure: it is retried);
- ``failed``: its run record says so (written by the job wrapper) and no job of it is left;
- ``running``: no result and no scheduler knows its job (no record, or status read on another machine), but
  a session's last checkpoint was written in the last ``RECENT_CHECKPOINT_S`` seconds;
- ``pending``: everything else (never submitted, or its job ended without a result: it will be resubmitted).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lit_dendrite.errors import MissingFile
from lit_dendrite.io import read_json, write_json_atomic, write_text_atomic
from lit_dendrite.runs import FINISHED, FileLock, RunDir, RunRecord, find_records, path_fallbacks
from lit_dendrite.sweeps.backends import BACKENDS
from lit_dendrite.sweeps.evaluation import evaluation_error, evaluation_state, refused_attacks
from lit_dendrite.sweeps.search import read_search, search_lines, search_state

MANIFEST = "sweep.json"
JOBS = "jobs.json"
JOB_ID_SEPARATOR = ","  # a run that several jobs share (--cluster local) is recorded with all their ids
LOGS = "logs"  # the jobs' logs, and files the jobs of a submission share
CONFIG_SNAPSHOTS = "submitted_configs"  # the experiment configs as submitted, named by content
JOBS_LOCK = ".jobs.lock"
JOBS_LOCK_WAIT_S = 60.0
SUMMARY = "summary.csv"
STATES = ("pending", "running", "done", "failed", "diverged", "stalled")
RUNNING_JOB_STATES = ("RUNNING", "COMPLETING", "CONFIGURING")
RECENT_CHECKPOINT_S = 15 * 60
SUMMARY_SKIPPED = ("config", "sessions", "versions")


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    """The manifest written at submission: sweep name, sweep file and every run with its axes and arguments."""
    manifest = read_json(sweep_dir / MANIFEST)
    if manifest is None:
        raise MissingFile(
            f"{sweep_dir / MANIFEST} not found: {sweep_dir} is not a sweep directory; pass <out>/<sweep name> "
            "as written by `python launch/sweep.py` (e.g. runs/demo)"
        )
    return manifest


def record_jobs(sweep_dir: Path, cluster: str, jobs: dict[str, list[str]]) -> None:
    """Add ``{run dir: ids of the jobs that may train it}`` of a submission to the sweep's job record (newest
    submission wins), under a lock so that two submissions at once both keep their jobs."""
    with FileLock(sweep_dir / JOBS_LOCK, "another submission is recording its jobs", JOBS_LOCK_WAIT_S):
        records = read_json(sweep_dir / JOBS) or {}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        records.update(
            {
                run: {"job_id": JOB_ID_SEPARATOR.join(ids), "cluster": cluster, "submitted": stamp}
                for run, ids in jobs.items()
            }
        )
        write_json_atomic(sweep_dir / JOBS, records)


def _job_ids(record: dict[str, str]) -> list[str]:
    return record["job_id"].split(JOB_ID_SEPARATOR)


def _live(job_state: str | None) -> bool:
    return job_state not in (None, "ENDED")


def _scheduler_states(records: dict[str, dict[str, str]]) -> dict[tuple[str, str], str | None]:
    """``{(cluster, job id): state}`` of every job in the records, asked of the backend that ran it (one query per
    backend): RUNNING, PENDING, REQUEUED, ... while the job is known, ENDED after, or None where the scheduler
    cannot be asked (also for a backend not registered in this process)."""
    ids: dict[str, dict[str, None]] = {}  # ordered sets
    for record in records.values():
        ids.setdefault(record["cluster"], {}).update(dict.fromkeys(_job_ids(record)))
    known: dict[tuple[str, str], str | None] = {}
    for cluster, job_ids in ids.items():
        asked = BACKENDS[cluster].job_states(list(job_ids)) if cluster in BACKENDS else dict.fromkeys(job_ids)
        known |= {(cluster, job_id): state for job_id, state in asked.items()}
    return known


def job_states(records: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """Scheduler state of each run's last submission (see :func:`_scheduler_states`); a run that several jobs share
    takes a running state of one of them, else any live state, else None if one is unknown, else ENDED."""
    known = _scheduler_states(records)
    states = {}
    for run, record in records.items():
        shared = [known[record["cluster"], job_id] for job_id in _job_ids(record)]
        live = [state for state in shared if _live(state)]
        running = [state for state in live if state in RUNNING_JOB_STATES]
        states[run] = (running or live or [None if None in shared else "ENDED"])[0]
    return states


def cancel_jobs(sweep_dir: Path) -> dict[str, list[str]]:
    """Cancel the sweep's queued and running jobs, each through the backend that submitted it; ``{job id: its
    runs}`` of those cancelled. Their runs show as pending and resume at the next submission."""
    read_manifest(sweep_dir)
    records = read_json(sweep_dir / JOBS) or {}
    known = _scheduler_states(records)
    live: dict[str, dict[str, list[str]]] = {}
    for run, record in records.items():
        for job_id in _job_ids(record):
            if _live(known[record["cluster"], job_id]):
                live.setdefault(record["cluster"], {}).setdefault(job_id, []).append(run)
    for cluster, jobs in live.items():
        BACKENDS[cluster].cancel(list(jobs))
    return {job_id: runs for jobs in live.values() for job_id, runs in jobs.items()}


def _recent_checkpoint(run_dir: Path, now: float) -> bool:
    return any(now - ckpt.stat().st_mtime < RECENT_CHECKPOINT_S for ckpt in RunDir(run_dir).last_checkpoints())


def run_states(sweep_dir: Path, runs: list[str]) -> dict[str, dict[str, Any]]:
    """``{run dir: {"state", "live", "job_id", "job_state", "result"}}`` for the given runs (``live``: its job is
    queued or running)."""
    records = read_json(sweep_dir / JOBS) or {}
    scheduler = job_states({run: records[run] for run in runs if run in records})
    now = time.time()
    states = {}
    for run in runs:
        result = read_json(RunDir(sweep_dir / run).result) or {}
        job_state = scheduler.get(run)
        live = _live(job_state)
        if result.get("status") in FINISHED:
            state = result["status"]
        elif live:  # jobs running several runs in turn (--cluster local) have started only those they train
            started = job_state in RUNNING_JOB_STATES and FileLock(RunDir(sweep_dir / run).lock, "").held()
            state = "running" if started else "pending"
        elif result.get("status") == "failed":
            state = "failed"
        elif job_state is None and _recent_checkpoint(sweep_dir / run, now):
            state = "running"
        else:
            state = "pending"
        job_id = records.get(run, {}).get("job_id")
        states[run] = {"state": state, "live": live, "job_id": job_id, "job_state": job_state, "result": result or None}
    return states


def unfinished_runs(sweep_dir: Path, runs: list[str]) -> dict[str, str]:
    """``{run dir: state}`` of those of ``runs`` that are not done: failed, diverged, or still pending or running,
    or (for a sweep with an ``evaluate:`` section) done but not evaluated."""
    evaluate = read_manifest(sweep_dir).get("evaluate")
    unfinished = {}
    for run, info in run_states(sweep_dir, runs).items():
        evaluation = evaluation_state(sweep_dir / run, evaluate) if info["state"] == "done" else "-"
        if info["state"] != "done":
            unfinished[run] = info["state"]
        elif evaluation not in ("done", "-"):
            unfinished[run] = f"done, evaluation {evaluation}"
    return unfinished


def format_status(sweep_dir: Path) -> str:
    """A table of every run of the sweep in ``sweep_dir`` with its state and job (and, for a sweep with an
    ``evaluate:`` section, its evaluation state: calls done of all, and whether a job evaluates it now), then the
    counts per state; a sweep with a search first shows each condition's trials and best value so far."""
    manifest = read_manifest(sweep_dir)
    runs = [run["dir"] for run in manifest["runs"]]
    searched = read_search(sweep_dir)
    search = (
        []
        if searched is None
        else search_lines(sweep_dir, searched[0], search_state(sweep_dir, manifest["sweep"], *searched))
    )
    if not runs:
        return "\n".join([*search, "final runs: none yet (submitted once every condition's study has its trials)"])
    evaluate = manifest.get("evaluate")
    states = run_states(sweep_dir, runs)
    evaluations = {run: evaluation_state(sweep_dir / run, evaluate) for run in runs} if evaluate else {}
    evaluating = {run for run, state in evaluations.items() if _evaluating(sweep_dir / run, states[run], state)}
    width = max(len(run) for run in runs)
    lines = [f"{'run':<{width}}  {'state':<8}  " + (f"{'evaluation':<14}  " if evaluate else "") + "job"]
    for run in runs:
        info = states[run]
        job = info["job_id"] or "-"
        if info["live"]:
            job += f" ({info['job_state'].lower()})"
        evaluation = evaluations.get(run, "") + (", running" if run in evaluating else "")
        evaluation = f"{evaluation:<14}  " if evaluate else ""
        lines.append(f"{run:<{width}}  {info['state']:<8}  {evaluation}{job}")
        if info["state"] == "stalled":
            lines.append(f"    {info['result'].get('error')}")
        if info["state"] == "failed":
            error = (info["result"].get("error") or "").strip().splitlines()
            lines.append(f"    error: {error[-1] if error else '?'}")
            lines.append(f"    log:   {info['result'].get('log')}")
        lines += [f"    fell back: {line}" for line in path_fallbacks(info["result"] or {})]
        if evaluations.get(run) == "failed":
            failure = evaluation_error(sweep_dir / run) or {}
            error = (failure.get("error") or "").strip().splitlines()
            lines.append(f"    evaluation error: {error[-1] if error else '?'}")
            lines.append(f"    log:   {failure.get('log')}")
        if evaluations.get(run) == "done":
            lines += [f"    refused: {attack}: {reason}" for attack, reason in refused_attacks(sweep_dir / run).items()]
    counts = {state: sum(info["state"] == state for info in states.values()) for state in STATES}
    lines.append(", ".join(f"{state} {n}" for state, n in counts.items()) + f" (of {len(runs)})")
    if fell_back := sum(bool(path_fallbacks(info["result"] or {})) for info in states.values()):
        lines.append(f"inner net: {fell_back} run(s) fell back from the fused op to a torch path (see 'fell back')")
    if evaluate:
        done = sum(state == "done" for state in evaluations.values())
        failed = sum(state == "failed" for state in evaluations.values())
        todo = sum(state not in ("done", "failed", "-") for state in evaluations.values()) - len(evaluating)
        lines.append(f"evaluation: done {done}, running {len(evaluating)}, to do {todo}, failed {failed}")
    return "\n".join([*search, *lines])


def _evaluating(run_dir: Path, info: dict[str, Any], evaluation: str) -> bool:
    """Whether a job evaluates the run now: it is trained, its evaluation unfinished, its job running and the run's
    lock (held while a process trains or evaluates it) taken."""
    unfinished = info["state"] == "done" and evaluation not in ("done", "failed", "-")
    return unfinished and info["job_state"] in RUNNING_JOB_STATES and FileLock(RunDir(run_dir).lock, "").held()


def _flatten(result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in result.items():
        if key in SUMMARY_SKIPPED:
            continue
        if isinstance(value, dict):
            row.update({f"{key}.{k}": json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in value.items()})
        else:
            row[key] = json.dumps(value) if isinstance(value, list) else value
    return row


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def collect(sweep_dir: Path, analysis: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write ``summary.csv``: one row per run record under ``sweep_dir``, with the run's condition, axis values,
    record and, from ``analysis`` (``{run name: {column: value}}``, the report's per-run numbers), every number the
    report's tables summarise."""
    if not sweep_dir.is_dir():
        raise MissingFile(f"{sweep_dir} is not a directory; pass <out>/<sweep name>, e.g. runs/demo")
    manifest = read_json(sweep_dir / MANIFEST) or {"runs": []}
    axes = {run["dir"]: run.get("axes", {}) for run in manifest["runs"]}
    rows = []
    for path in find_records(sweep_dir):
        result = read_json(path)
        if not isinstance(result, dict):
            continue
        run = path.parent.relative_to(sweep_dir).as_posix()
        axis_columns = {f"axis.{k}": v for k, v in axes.get(run, {}).items()}
        row = {"run": run, "condition": RunRecord(RunDir(path.parent), result, run).condition}
        row |= {"status": result.get("status"), **axis_columns, **_flatten(result)}
        numbers = (analysis or {}).get(run, {})
        rows.append(row | {key: None if _is_nan(value) else value for key, value in numbers.items()})
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(sweep_dir / SUMMARY, text.getvalue())
    return sweep_dir / SUMMARY
