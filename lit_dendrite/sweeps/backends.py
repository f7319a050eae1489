"""Cluster backends: where a sweep's jobs run. ``--cluster NAME`` selects the backend registered under ``NAME`` in
:data:`BACKENDS`; adding one is a :class:`ClusterBackend` subclass with :func:`register_backend` (docs/cluster.md,
"Adding a cluster backend"). The sweep code asks the backend, never compares names."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from lit_dendrite.sweeps.cluster import ClusterConfig, ClusterError, use_term_as_preempt_signal


class ClusterBackend:
    """Where a sweep's jobs run. The defaults fit a backend that submits each run as one job, passes the cluster
    config's devices and nodes to the Trainer, needs no check before submitting and keeps no job alive."""

    name: ClassVar[str]
    """What ``--cluster`` and the sweep's job record (``jobs.json``) call this backend."""
    default_config: ClassVar[str | None] = None
    """The file in ``configs/cluster/`` used without ``--cluster-config`` (None: :class:`ClusterConfig`'s defaults)."""

    def check(self, config: ClusterConfig) -> None:
        """Raise a :class:`ClusterError` naming the fix where the jobs cannot run here (not called for a dry run)."""

    def trainer_args(self, config: ClusterConfig) -> list[str]:
        """Arguments appended to every run's ``train`` arguments."""
        return config.trainer_args()

    def executor(self, config: ClusterConfig, folder: Path, job_name: str) -> submitit.Executor:
        """The submitit executor of the jobs, with logs under ``folder``."""
        raise NotImplementedError(f"cluster backend {self.name!r} must define executor()")

    def jobs(
        self, runs: dict[str, Callable[[], Any]], config: ClusterConfig, folder: Path
    ) -> list[tuple[list[str], Callable]]:
        """The callables to submit, each with the runs it may train, from ``{run dir: its job callable}``; a run
        listed by several callables is trained by one of them. ``folder`` (the sweep's logs) holds any files the
        callables share."""
        return [([run], job) for run, job in runs.items()]

    def after_submit(self, jobs: list[submitit.Job]) -> None:
        """Called once the jobs are submitted (a backend that runs them in this process runs them here)."""

    def job_states(self, job_ids: list[str]) -> dict[str, str | None]:
        """``{job id: state}``: the scheduler's state (RUNNING, PENDING, REQUEUED, ...) while a job is known, ENDED
        after, or None where the scheduler cannot be asked."""
        return dict.fromkeys(job_ids, "ENDED")

    def dry_run_text(self, config: ClusterConfig, folder: Path, job_name: str, num_jobs: int) -> str | None:
        """What a dry run prints of the submission beyond the runs' arguments (None: nothing)."""
        return None

    def cancel(self, job_ids: list[str]) -> None:
        """Stop the given live jobs for good (not requeued); their runs resume at the next submission."""
        raise ClusterError(f"cluster backend {self.name!r} cannot cancel jobs; stop them with the scheduler's tools")


BACKENDS: dict[str, ClusterBackend] = {}
"""The cluster backends by name, in the order ``--cluster`` lists them."""


def register_backend(cls: type[ClusterBackend]) -> type[ClusterBackend]:
    """Class decorator: make ``--cluster <cls.name>`` select an instance of ``cls``."""
    name = getattr(cls, "name", None)
    if not (isinstance(cls, type) and issubclass(cls, ClusterBackend)) or not isinstance(name, str) or not name:
        raise TypeError(f"register_backend takes a ClusterBackend subclass with a `name`, got {cls!r}")
    if name in BACKENDS and type(BACKENDS[name]) is not cls:
        raise ValueError(f"a cluster backend named {name!r} is already registered ({type(BACKENDS[name])}); rename it")
    BACKENDS[name] = cls()
    return cls


def cluster_backend(name: str) -> ClusterBackend:
    """The backend registered as ``name``, with an error listing the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ClusterError(f"unknown cluster {name!r}; choose one of {list(BACKENDS)}") from None


@register_backend
class SlurmBackend(ClusterBackend):
    """One Slurm job array per submission; each run is an array element (DDP tasks per the cluster config)."""

    name = "slurm"
    default_config = "slurm_gpu.yaml"

    def check(self, config: ClusterConfig) -> None:
        """Fail early where Slurm cannot take the jobs: no sbatch/srun on PATH, or a partition Slurm rejects."""
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise ClusterError(
                f"--cluster slurm needs {' and '.join(missing)} on PATH; run this on a Slurm login node, "
                "or use --cluster local (workstation) or --cluster debug (in-process)"
            )
        if config.partition is not None:
            shown = subprocess.run(
                ["scontrol", "show", "partition", config.partition], capture_output=True, text=True, timeout=60
            )
            if shown.returncode != 0:
                listed = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
                raise ClusterError(
                    f"Slurm rejects partition {config.partition!r} ({shown.stderr.strip() or shown.stdout.strip()}); "
                    f"available partitions: {listed.stdout.split()}; fix `partition` in the cluster config"
                )

    def executor(self, config: ClusterConfig, folder: Path, job_name: str) -> submitit.Executor:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=config.max_timeouts)
        executor.update_parameters(**config.slurm_parameters(job_name))
        return executor

    def job_states(self, job_ids: list[str]) -> dict[str, str | None]:
        """squeue's state of each job (array elements as ``<id>_<index>``); None for all without squeue."""
        if shutil.which("squeue") is None:
            return dict.fromkeys(job_ids)
        shown = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T", "-j", _array_ids(job_ids)], capture_output=True, text=True, timeout=60
        )
        if shown.returncode != 0 and "Invalid job id" not in shown.stderr:
            return dict.fromkeys(job_ids)
        known = dict(line.split(maxsplit=1) for line in shown.stdout.splitlines() if line.strip())
        return {job_id: known.get(job_id, "ENDED") for job_id in job_ids}

    def cancel(self, job_ids: list[str], timeout_s: float = 60.0) -> None:
        """Cancel the jobs (array elements as ``<id>_<index>``) so that they are not requeued.

        ``scancel`` of a job sends SIGTERM to its tasks, which submitit takes for a preemption
        (``SUBMITIT_PREEMPT_SIGNAL``): it requeues the job (measured on Slurm 22.05). So the tasks of a running job
        get SIGKILL through its steps (``scancel --signal=KILL <id>.<step>``), which ends the job without
        requeueing it, and only a job with no step running (queued, or before its first step) is cancelled.
        Repeated until none is left queued or running: a job may start meanwhile.
        """
        if shutil.which("scancel") is None:
            raise ClusterError("cancelling Slurm jobs needs scancel on PATH; run this on the cluster's login node")
        deadline = time.monotonic() + timeout_s
        while True:
            live = [job for job, state in self.job_states(job_ids).items() if state not in (None, "ENDED")]
            if not live:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"Slurm jobs {live} are still queued or running after {timeout_s:.0f} s")
            steps = self._task_steps(live)
            stepless = [job for job in live if job not in {step.rsplit(".", 1)[0] for step in steps}]
            # An error for a job or step that ended meanwhile is expected: the next round looks again.
            if steps:
                subprocess.run(["scancel", "--signal=KILL", *steps], capture_output=True, timeout=60)
            if stepless:
                subprocess.run(["scancel", *stepless], capture_output=True, timeout=60)
            time.sleep(1.0)

    @staticmethod
    def _task_steps(job_ids: list[str]) -> list[str]:
        """The running steps (``<job>.<n>``, not the batch or extern step) of the given jobs."""
        shown = subprocess.run(
            ["squeue", "-h", "-s", "-o", "%i", "-j", _array_ids(job_ids)], capture_output=True, text=True, timeout=60
        )
        steps = [line.strip() for line in shown.stdout.splitlines() if line.strip()]
        return [step for step in steps if step.rsplit(".", 1)[-1].isdigit() and step.rsplit(".", 1)[0] in job_ids]

    def dry_run_text(self, config: ClusterConfig, folder: Path, job_name: str, num_jobs: int) -> str:
        """The sbatch script submitit would submit for a job array of ``num_jobs`` runs."""
        use_term_as_preempt_signal()
        command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
        map_count = num_jobs if num_jobs > 1 else None
        script = _make_sbatch_string(
            command=command, folder=folder, map_count=map_count, **config.slurm_parameters(job_name)
        )
        return f"sbatch script (dry run, nothing submitted):\n{script}"


@register_backend
class LocalBackend(ClusterBackend):
    """Background processes on this machine: ``array_parallelism`` processes share the runs, each taking the next
    run that no other has taken (:class:`RunQueue`), so none sits idle while runs wait."""

    name = "local"
    default_config = "local.yaml"

    def executor(self, config: ClusterConfig, folder: Path, job_name: str) -> submitit.Executor:
        if config.nodes != 1:
            raise ClusterError(f"--cluster local runs on one machine; set nodes: 1 (got {config.nodes})")
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=config.max_timeouts)
        executor.update_parameters(
            timeout_min=config.time_min,
            tasks_per_node=config.tasks_per_node,
            gpus_per_node=config.gpus_per_node,
            signal_delay_s=config.signal_delay_s,
            setup=list(config.setup),
        )
        return executor

    def jobs(
        self, runs: dict[str, Callable[[], Any]], config: ClusterConfig, folder: Path
    ) -> list[tuple[list[str], Callable]]:
        """At most ``array_parallelism`` processes sharing one queue of every run (claims under ``folder``)."""
        claims = folder / f"claims-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        return [(list(runs), RunQueue(runs, claims)) for _ in range(min(config.array_parallelism, len(runs)))]

    def job_states(self, job_ids: list[str]) -> dict[str, str | None]:
        """RUNNING while a process of the job lives (see :func:`_local_job_roots`), ENDED after (also when its
        process id now belongs to another program, e.g. after a reboot)."""
        roots = _local_job_roots(job_ids)
        return {job_id: "RUNNING" if roots[job_id] else "ENDED" for job_id in job_ids}

    def cancel(self, job_ids: list[str]) -> None:
        """Kill each job's processes, parents first, each stopped before its children are listed so that none can
        start another: a killed job is not requeued (SIGTERM would requeue it, as a preemption)."""
        for roots in _local_job_roots(job_ids).values():
            stopped: list[int] = []
            to_stop = list(roots)
            while to_stop:
                pid = to_stop.pop()
                _signal(pid, signal.SIGSTOP)
                stopped.append(pid)
                to_stop += _children(pid)
            for pid in stopped:
                _signal(pid, signal.SIGKILL)


class RunQueue(submitit.helpers.Checkpointable):
    """One process of a local submission: runs, in the sweep's order, each run that no other process of the
    submission has claimed, until none is left. A claim is a file created exclusively under ``claims``, so two
    processes never take the same run. Requeued after a time limit or preemption, it resumes the run it holds.
    Returns ``{run: its callable's result}`` of the runs it took."""

    def __init__(self, runs: dict[str, Callable[[], Any]], claims: Path) -> None:
        self.runs = runs
        self.claims = claims
        self.results: dict[str, Any] = {}
        self.current: str | None = None

    def __call__(self) -> dict[str, Any]:
        for run, job in self.runs.items():
            if run in self.results or (run != self.current and not self._claim(run)):
                continue
            self.current = run
            self.results[run] = job()
            self.current = None
        return self.results

    def _claim(self, run: str) -> bool:
        claim = self.claims / run
        claim.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on time limit or preemption: tell the run in progress (so that an error it raises
        now is an interruption), then rerun this queue, with its claim and results, after the requeue."""
        interruptible = getattr(self.runs.get(self.current), "checkpoint", None)
        if interruptible is not None:
            interruptible()
        return submitit.helpers.DelayedSubmission(self)


def _array_ids(job_ids: list[str]) -> str:
    """The jobs' array ids (``<id>`` of ``<id>_<index>``) as squeue's ``-j`` takes them."""
    return ",".join(sorted({job_id.split("_")[0] for job_id in job_ids}))


def _live_parent(pid: int) -> int | None:
    """The parent pid of a live process, None when there is none (zombies included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[1])


def _is_local_job(pid: int) -> bool:
    """Whether ``pid`` is a live submitit local job (the job id is its controller's, or its shell's, process id)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit.local._local" in command and _live_parent(pid) is not None


def _local_job_roots(job_ids: list[str]) -> dict[str, list[int]]:
    """The live processes at the top of each local job: its shell (or controller), whose process id is the job
    id, and the controller of each task that carries the job id in ``SUBMITIT_LOCAL_JOB_ID``, found even after
    the shell was killed (a plain ``kill`` of the job id) and the controller, orphaned, started a new task."""
    roots = {job_id: [int(job_id)] if _is_local_job(int(job_id)) else [] for job_id in job_ids}
    wanted = {f"SUBMITIT_LOCAL_JOB_ID={job_id}".encode(): job_id for job_id in job_ids}
    for entry in Path("/proc").iterdir():
        try:
            environment = set((entry / "environ").read_bytes().split(b"\0")) if entry.name.isdigit() else set()
        except OSError:  # ended, or another user's
            continue
        for variable in environment & wanted.keys():
            task, job_roots = int(entry.name), roots[wanted[variable]]
            controller = _live_parent(task)
            if controller is None:  # a zombie
                continue
            top = controller if _is_local_job(controller) else task
            if not any(_descends(top, root) for root in job_roots):
                job_roots.append(top)
    return roots


def _descends(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or one of its live descendants."""
    while pid > 1:
        if pid == ancestor:
            return True
        pid = _live_parent(pid) or 0
    return False


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [child for child in pids if _live_parent(child) == pid]


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signum)


@register_backend
class DebugBackend(ClusterBackend):
    """Every run in this process, one after the other, with the experiment's own Trainer settings (for a debugger)."""

    name = "debug"

    def trainer_args(self, config: ClusterConfig) -> list[str]:
        return []

    def executor(self, config: ClusterConfig, folder: Path, job_name: str) -> submitit.Executor:
        return submitit.DebugExecutor(folder=folder)

    def after_submit(self, jobs: list[submitit.Job]) -> None:
        for job in jobs:
            job.result()
