"""Pytest plugin: the session-wide private Slurm cluster (tests/slurm/cluster.py) as the fixture ``slurm_cluster``.

Tests that use it are marked ``@pytest.mark.cluster``. Set LIT_DENDRITE_NO_CLUSTER=1 to skip them; anywhere
else a cluster that cannot be installed or started fails the tests loudly. Every session starts a fresh cluster,
so job ids restart at 1: give each test its own submitit folder (``tmp_path``). Each session's state directory
(config, logs of every daemon) stays under STATE_ROOT until a later session finds its owner gone and removes it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from slurm.cluster import SlurmCluster, process_start_time

STATE_ROOT = Path("/tmp/lit-dendrite-slurm")
SKIP_VARIABLE = "LIT_DENDRITE_NO_CLUSTER"
# sacct states after which the job may still run (submitit's list plus the rarer transitional ones)
UNFINISHED_STATES = {
    *("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN"),
    *("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED"),
}


def remove_abandoned_clusters(root: Path) -> None:
    """Stop and delete the clusters of earlier sessions whose pytest process is gone (killed, crashed)."""
    for state_dir in root.glob("pytest-*-*"):
        _, pid, start_time = state_dir.name.split("-")
        if process_start_time(int(pid)) != int(start_time):
            SlurmCluster(state_dir).stop()
            shutil.rmtree(state_dir, ignore_errors=True)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    """Poll condition until it holds; fail the test naming what was awaited after timeout_s seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def wait_for_jobs(jobs: Iterable, timeout_s: float, poll_s: float = 2.0) -> list[str]:
    """Wait until sacct reports every submitit job finished and return their states; fail after timeout_s."""
    jobs = list(jobs)
    deadline = time.monotonic() + timeout_s
    while True:
        states = [job.get_info(mode="force").get("State", "UNKNOWN") for job in jobs]
        if all(state.upper() not in UNFINISHED_STATES for state in states):
            return states
        if time.monotonic() > deadline:
            listing = ", ".join(f"{job.job_id}: {state}" for job, state in zip(jobs, states, strict=True))
            pytest.fail(f"Slurm jobs not finished after {timeout_s} s ({listing})")
        time.sleep(poll_s)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node cluster; its env (SLURM_CONF) is set in os.environ for the whole session."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: the tests that need a Slurm cluster are switched off")
    STATE_ROOT.mkdir(exist_ok=True)
    STATE_ROOT.chmod(0o755)
    remove_abandoned_clusters(STATE_ROOT)
    cluster = SlurmCluster(STATE_ROOT / f"pytest-{os.getpid()}-{process_start_time(os.getpid())}")
    cluster.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key in list(os.environ):
                if key.startswith(("SLURM_", "SBATCH_")):
                    patch.delenv(key)
            for key, value in cluster.env.items():
                patch.setenv(key, value)
            yield cluster
    finally:
        cluster.stop()
