"""`launch/sweep.py cancel`: a local job is killed for good (SIGTERM would requeue it), also after its shell was
killed, a process that is not a submitit job is left alone, and the cancelled run is pending, to be resumed by the
next submission."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import load_launcher
from slurm_cluster import wait_until

from lit_dendrite.sweeps.backends import cluster_backend
from lit_dendrite.sweeps.cluster import ClusterConfig
from lit_dendrite.sweeps.state import MANIFEST, record_jobs, run_states

RUN = "e/seed=1"


def _processes_running(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and marker.encode() in command and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@pytest.fixture
def sleeping_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str, Path]]:
    """A local job whose task sleeps, submitted as sweep.py submits it, its task started: (sweep directory, job
    id, logs). Whatever of it a failed test leaves alive is killed after."""
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "TERM")  # as sweep.py submits: a SIGTERM requeues the job
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / MANIFEST).write_text(json.dumps({"name": "sweep", "runs": [{"dir": RUN}]}))
    logs = sweep_dir / "logs"
    backend = cluster_backend("local")
    job = backend.executor(ClusterConfig(setup=["export OMP_NUM_THREADS=1"]), logs, "sleep").submit(time.sleep, 600)
    record_jobs(sweep_dir, "local", {RUN: [job.job_id]})

    def task_started() -> bool:
        return any(b"Loading pickle" in path.read_bytes() for path in logs.rglob("*_log.out"))

    wait_until(task_started, 60, "the job's task to start")
    assert len(_processes_running(str(logs))) >= 3, "expected the shell, the controller and the task"
    yield sweep_dir, job.job_id, logs
    for pid in _processes_running(str(logs)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _cancel_ends_every_process(sweep_dir: Path, job_id: str, logs: Path, capsys: pytest.CaptureFixture) -> None:
    launcher = load_launcher()
    assert launcher.main(["cancel", str(sweep_dir)]) == 0
    assert f"cancelled job {job_id}: {RUN}" in capsys.readouterr().out

    def all_gone() -> bool:
        return not _processes_running(str(logs))

    wait_until(all_gone, 10, "every process of the job to end")
    time.sleep(2)
    assert all_gone(), "the cancelled job was requeued"
    assert run_states(sweep_dir, [RUN])[RUN]["state"] == "pending"
    assert launcher.main(["cancel", str(sweep_dir)]) == 0
    assert "no job of" in capsys.readouterr().out


def test_cancel_kills_a_local_job_for_good_and_its_run_resumes_later(
    sleeping_job: tuple[Path, str, Path], capsys: pytest.CaptureFixture
) -> None:
    sweep_dir, job_id, logs = sleeping_job
    assert run_states(sweep_dir, [RUN])[RUN]["live"]
    _cancel_ends_every_process(sweep_dir, job_id, logs, capsys)


def test_a_local_job_whose_shell_was_killed_still_shows_live_and_cancel_ends_its_orphaned_processes(
    sleeping_job: tuple[Path, str, Path], capsys: pytest.CaptureFixture
) -> None:
    sweep_dir, job_id, logs = sleeping_job
    os.kill(int(job_id), signal.SIGTERM)  # a plain `kill JOB_ID`: the job's shell ends, its controller lives on
    wait_until(lambda: int(job_id) not in _processes_running(str(logs)), 10, "the job's shell to end")
    assert _processes_running(str(logs)), "the controller and its task should outlive the shell"
    assert run_states(sweep_dir, [RUN])[RUN]["live"], "the orphaned job is still running"
    _cancel_ends_every_process(sweep_dir, job_id, logs, capsys)


def test_a_process_id_that_is_not_a_local_job_is_ended_and_left_alone() -> None:
    backend = cluster_backend("local")
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert backend.job_states([str(other.pid)]) == {str(other.pid): "ENDED"}
        backend.cancel([str(other.pid)])
        time.sleep(0.2)
        assert other.poll() is None, "cancel killed a process that is not a submitit job"
    finally:
        other.kill()
        other.wait()


def test_cancel_of_a_directory_that_is_not_a_sweep_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        load_launcher().main(["cancel", str(tmp_path)])
    assert stopped.value.code == 2 and "is not a sweep directory" in capsys.readouterr().err
