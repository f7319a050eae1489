"""One process per run directory (issue 12.6): a second train.py stops naming the holder, a dead holder never
blocks, a requeued Slurm job waits for its own previous process, and the sweep's job record is updated under a
lock."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lit_dendrite.runs import FileLock, Locked, RunDir

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from lit_dendrite.runs import FileLock
FileLock(sys.argv[1], "test").acquire()
print("held", flush=True)
time.sleep(600)
"""


def _hold(path: Path, **env: str) -> subprocess.Popen:
    """A process that takes the lock on ``path`` and keeps it until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_process_is_refused_with_the_holder_named(tmp_path):
    holder = _hold(tmp_path / ".lock")
    try:
        with pytest.raises(Locked, match=rf"locked by pid {holder.pid} on {os.uname().nodename}.*; use another"):
            FileLock(tmp_path / ".lock", "use another").acquire()
    finally:
        holder.kill()
        holder.wait()
    with FileLock(tmp_path / ".lock", "use another") as lock:  # the kernel dropped the dead holder's lock
        assert lock.holder()["pid"] == os.getpid()


def test_holder_recorded_by_a_dead_process_does_not_block(tmp_path):
    (tmp_path / ".lock").write_text('{"host": "elsewhere", "pid": 1, "slurm_job": null, "since": "yesterday"}')
    with FileLock(tmp_path / ".lock", "advice"):
        pass


def test_requeued_slurm_job_waits_for_its_own_previous_process(tmp_path, monkeypatch):
    holder = _hold(tmp_path / ".lock", SLURM_JOB_ID="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    threading.Timer(1.0, holder.kill).start()
    started = time.monotonic()
    with FileLock(tmp_path / ".lock", "advice"):
        assert time.monotonic() - started >= 0.9
    holder.wait()


def test_other_slurm_job_is_refused_at_once(tmp_path, monkeypatch):
    holder = _hold(tmp_path / ".lock", SLURM_JOB_ID="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    try:
        with pytest.raises(Locked, match="Slurm job 4242"):
            FileLock(tmp_path / ".lock", "advice").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_second_train_on_the_same_run_dir_stops_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    holder = _hold(RunDir(run_dir).lock)
    command = ["launch/train.py", "--config", "configs/experiment/mlp_digits_relu.yaml", "--run_dir", str(run_dir)]
    try:
        second = subprocess.run(
            [sys.executable, *command],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2 and second.stderr.startswith("error: ")
    assert f"is locked by pid {holder.pid}" in second.stderr and "another process is training this run" in second.stderr
    assert not RunDir(run_dir).session("II_joint").path.exists()


RECORD = """
import sys
from pathlib import Path
from lit_dendrite.sweeps.state import record_jobs
for i in range(40):
    record_jobs(Path(sys.argv[1]), "local", {f"{sys.argv[2]}/run{i}": [str(i)]})
"""


def test_concurrent_submissions_keep_every_job_record(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", RECORD, str(tmp_path), name], env=env) for name in "ab"]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    from lit_dendrite.io import read_json
    from lit_dendrite.sweeps.state import JOBS

    assert len(read_json(tmp_path / JOBS)) == 80
