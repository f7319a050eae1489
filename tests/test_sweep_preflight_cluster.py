"""The preflight as one job on a real single-node Slurm cluster (fixture ``slurm_cluster``): the sweep's partition
and setup lines, one job, every kind of run timed on the node, the job id recorded and named by the dry run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_sweep_preflight import KINDS, REPO, check_every_kind_timed_on_cpu, write_sweep

from lit_dendrite.sweeps.cluster import load_cluster_config
from lit_dendrite.sweeps.launch import submit_sweep
from lit_dendrite.sweeps.preflight_job import run_preflight
from lit_dendrite.sweeps.spec import load_sweep

pytestmark = pytest.mark.cluster


def test_a_slurm_preflight_times_every_kind_on_a_compute_node(slurm_cluster, tmp_path: Path) -> None:
    config = load_cluster_config(REPO / "configs" / "cluster" / "test_cluster.yaml")
    config = dataclasses.replace(config, partition=slurm_cluster.partition)
    sweep = load_sweep(write_sweep(tmp_path, ["mlp_digits_2arg", "mlp_digits_relu"]))
    printed: list[str] = []
    preflight = run_preflight(sweep, "slurm", config, tmp_path / "runs", time_min=15, echo=printed.append)
    assert preflight is not None, "\n".join(printed)
    check_every_kind_timed_on_cpu(preflight.data)
    job_id = preflight.data["job_id"]
    assert job_id.isdigit() and f"submitted preflight job {job_id}" in "\n".join(printed)
    assert preflight.data["time_limit_min"] == 15 and set(preflight.kinds) == set(KINDS)
    lines: list[str] = []
    submit_sweep(sweep, "slurm", config, tmp_path / "runs", dry_run=True, echo=lines.append)
    assert f"measured by preflight job {job_id} on cpu" in lines[1]
