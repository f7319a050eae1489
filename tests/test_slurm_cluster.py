"""The private Slurm cluster runs submitit jobs the way the sweeps rely on: arrays, accounting, requeue, 2 tasks."""

import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
from slurm.cluster import SlurmCluster
from slurm_cluster import wait_for_jobs, wait_until

pytestmark = pytest.mark.cluster

# The jobs cannot import this module (only pytest put tests/ on sys.path), so its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_TIMEOUT_S = 120


def slurm_executor(cluster: SlurmCluster, folder: Path, **parameters) -> submitit.AutoExecutor:
    """A submitit executor for the cluster's default partition, one CPU per task unless parameters say otherwise."""
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        **{"slurm_partition": cluster.partition, "timeout_min": 30, "cpus_per_task": 1, **parameters}
    )
    return executor


def square(x: int) -> int:
    return x * x


def fail_on_purpose() -> None:
    raise ValueError("failed on purpose")


def record_start(marker: Path) -> list[str]:
    """Append SLURM_RESTART_COUNT to marker on each start; the first start then waits to be requeued."""
    with marker.open("a") as file:
        file.write(os.environ.get("SLURM_RESTART_COUNT", "0") + "\n")
    starts = marker.read_text().splitlines()
    if len(starts) == 1:
        time.sleep(600)
    return starts


def task_rank() -> tuple[int, int]:
    return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])


def test_job_array_returns_every_result(slurm_cluster, tmp_path):
    jobs = slurm_executor(slurm_cluster, tmp_path).map_array(square, [1, 2, 3])
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "map_array must submit one job array"
    assert wait_for_jobs(jobs, JOB_TIMEOUT_S) == ["COMPLETED"] * 3
    assert [job.result() for job in jobs] == [1, 4, 9]
    assert [job.state for job in jobs] == ["COMPLETED"] * 3


def test_accounting_reports_failed_and_cancelled_jobs(slurm_cluster, tmp_path):
    executor = slurm_executor(slurm_cluster, tmp_path)
    failing = executor.submit(fail_on_purpose)
    sleeping = executor.submit(time.sleep, 600)
    sleeping.cancel()
    failed_state, cancelled_state = wait_for_jobs([failing, sleeping], JOB_TIMEOUT_S)
    assert failed_state == "FAILED"
    assert cancelled_state.startswith("CANCELLED")
    with pytest.raises(submitit.core.utils.FailedJobError, match="failed on purpose"):
        failing.result()


def test_scontrol_requeue_runs_the_original_callable_again(slurm_cluster, tmp_path):
    marker = tmp_path / "starts.txt"
    job = slurm_executor(slurm_cluster, tmp_path).submit(record_start, marker)
    wait_until(marker.exists, JOB_TIMEOUT_S, "the job's first start")
    slurm_cluster.run("scontrol", "requeue", job.job_id)
    assert wait_for_jobs([job], JOB_TIMEOUT_S) == ["COMPLETED"]
    assert job.result() == ["0", "1"]


def test_two_task_job_runs_rank_0_and_rank_1(slurm_cluster, tmp_path):
    job = slurm_executor(slurm_cluster, tmp_path, nodes=1, tasks_per_node=2).submit(task_rank)
    assert wait_for_jobs([job], JOB_TIMEOUT_S) == ["COMPLETED"]
    assert sorted(job.results()) == [(0, 2), (1, 2)]


def test_short_partition_rejects_a_longer_time_limit_at_submission(slurm_cluster, tmp_path):
    too_long = slurm_cluster.short_partition_max_min + 1
    executor = slurm_executor(
        slurm_cluster, tmp_path, slurm_partition=slurm_cluster.short_partition, timeout_min=too_long
    )
    with pytest.raises(submitit.core.utils.FailedJobError, match="time limit"):
        executor.submit(square, 2)
