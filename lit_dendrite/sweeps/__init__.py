"""Sweeps: sweep files -> runs, the plan (GPU-hours, the data sets the jobs read), cluster backends (Slurm, local,
debug; a registry), run directories, status, collection.

Importing this package stays light (no torch/Lightning) so that `launch/sweep.py status` answers at once; the
Trainer additions for Slurm live in :mod:`lit_dendrite.sweeps.preemption`.
"""

from lit_dendrite.sweeps.backends import BACKENDS, ClusterBackend, register_backend
from lit_dendrite.sweeps.cluster import ClusterConfig, ClusterError, load_cluster_config
from lit_dendrite.sweeps.job import TrainRun
from lit_dendrite.sweeps.spec import PlannedRun, Sweep, SweepError, load_sweep
from lit_dendrite.sweeps.state import collect, format_status

__all__ = [
    "BACKENDS",
    "ClusterBackend",
    "ClusterConfig",
    "ClusterError",
    "PlannedRun",
    "Sweep",
    "SweepError",
    "TrainRun",
    "collect",
    "format_status",
    "load_cluster_config",
    "load_sweep",
    "register_backend",
]
