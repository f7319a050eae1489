"""Cluster configs (``configs/cluster/*.yaml``): scheduler settings, the Trainer arguments they imply (devices,
nodes, DDP) and their checks; the backends that run jobs with them are in :mod:`lit_dendrite.sweeps.backends`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from submitit.core.job_environment import JobEnvironment

from lit_dendrite.errors import ConfigError
from lit_dendrite.io import read_yaml


class ClusterError(ConfigError):
    """A cluster config or environment that cannot run the sweep; the message names the fix."""


@dataclass(frozen=True)
class ClusterConfig:
    """Scheduler settings for every job of a sweep (one job = one run, possibly several DDP tasks)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    array_parallelism: int = 64
    signal_delay_s: int = 120
    max_timeouts: int = 20
    accelerator: str | None = None
    sbatch_extra: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        """Number of training processes of one run."""
        return self.nodes * self.tasks_per_node

    def trainer_args(self) -> list[str]:
        """Trainer overrides that make Lightning use exactly the processes and devices Slurm allocates."""
        accelerator = self.accelerator or ("gpu" if self.gpus_per_node > 0 else "cpu")
        strategy = "ddp" if self.world_size > 1 else "auto"
        return [
            "--trainer.accelerator", accelerator,
            "--trainer.devices", str(self.tasks_per_node),
            "--trainer.num_nodes", str(self.nodes),
            "--trainer.strategy", strategy,
        ]  # fmt: skip

    def slurm_parameters(self, job_name: str) -> dict[str, Any]:
        """Keyword arguments of submitit's SlurmExecutor.update_parameters."""
        extra = {}
        for line in self.sbatch_extra:
            key, _, value = line.removeprefix("--").partition("=")
            extra[key] = value if value else True
        params: dict[str, Any] = {
            "job_name": job_name,
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "constraint": self.constraint,
            "time": self.time_min,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "gpus_per_node": self.gpus_per_node or None,
            "cpus_per_task": self.cpus_per_task,
            "mem": f"{round(self.mem_gb * 1024)}M" if self.mem_gb is not None else None,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": self.signal_delay_s,
            "setup": list(self.setup) or None,
            "additional_parameters": extra or None,
        }
        return {k: v for k, v in params.items() if v is not None}


def load_cluster_config(path: str | Path | None) -> ClusterConfig:
    """Read and validate a cluster config; ``None`` gives the defaults (one CPU process)."""
    if path is None:
        return ClusterConfig()
    path = Path(path)
    if not path.is_file():
        raise ClusterError(f"cluster config {path} does not exist; pick one from configs/cluster/")
    raw = read_yaml(path, "pass a readable cluster config to --cluster-config") or {}
    if not isinstance(raw, dict):
        raise ClusterError(f"cluster config {path} must be a YAML mapping")
    allowed = [f.name for f in fields(ClusterConfig)]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ClusterError(f"cluster config {path}: unknown key(s) {unknown}; allowed: {allowed}")
    config = ClusterConfig(**raw)
    for name in ("time_min", "nodes", "tasks_per_node", "cpus_per_task", "array_parallelism", "max_timeouts"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ClusterError(f"cluster config {path}: {name} must be a positive integer, got {value!r}")
    if config.gpus_per_node and config.tasks_per_node != config.gpus_per_node:
        raise ClusterError(
            f"cluster config {path}: tasks_per_node ({config.tasks_per_node}) must equal gpus_per_node "
            f"({config.gpus_per_node}): Lightning DDP runs one process per GPU (trainer.devices = tasks_per_node)"
        )
    bad_lines = [line for line in config.sbatch_extra if not str(line).startswith("--")]
    if bad_lines:
        raise ClusterError(f"cluster config {path}: sbatch_extra lines must look like '--key=value', got {bad_lines}")
    return config


def use_term_as_preempt_signal() -> None:
    """Make submitit checkpoint and requeue on SIGTERM (Slurm's partition preemption) as well as on time limits.

    The jobs inherit ``SUBMITIT_PREEMPT_SIGNAL`` from the submitting environment; submitit reads it once at
    import into the class attribute that also writes ``--signal`` into the sbatch script, so both are set here.
    """
    os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "TERM")
    JobEnvironment.USR_SIG = os.environ["SUBMITIT_PREEMPT_SIGNAL"]
