"""``launch/sweep.py preflight``: one short job, with the sweep's cluster settings, that measures every kind of run of
the sweep on a compute node and writes ``<out>/<sweep>/preflight.json`` (read by :mod:`lit_dendrite.sweeps.preflight`).
"""

from __future__ import annotations

import dataclasses
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from lit_dendrite.io import write_json_atomic
from lit_dendrite.runs.record import versions
from lit_dendrite.sweeps.backends import cluster_backend
from lit_dendrite.sweeps.cluster import ClusterConfig
from lit_dendrite.sweeps.launch import check_configs, checked_evaluate, run_args
from lit_dendrite.sweeps.plan import data_needs, missing_data, run_data, run_kind
from lit_dendrite.sweeps.preflight import PREFLIGHT, Preflight, memory_failure, read_preflight
from lit_dendrite.sweeps.spec import Sweep
from lit_dendrite.sweeps.state import LOGS


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def _job_id() -> str | None:
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not under a submitit executor (the debug backend runs it in this process)
        return None


class PreflightJob:
    """The job: for each kind, :func:`~lit_dendrite.sweeps.preflight_measure.measure_kind` on a representative run,
    its failure (unreadable data, a fused kernel failing its self-check, a peak beyond the memory, any error) with
    the fix, ``preflight.json`` rewritten after every kind so that a job cut short still leaves what it measured."""

    def __init__(
        self, sweep_dir: Path, kinds: dict[str, dict[str, Any]], evaluate: dict[str, Any] | None, config: ClusterConfig
    ) -> None:
        self.sweep_dir, self.kinds, self.evaluate, self.config = Path(sweep_dir), kinds, evaluate, config

    def __call__(self) -> dict[str, Any]:
        from lit_dendrite.sweeps.preflight_measure import device_info, measure_kind, node_device

        device = device_info(node_device())
        if device["type"] == "cuda" or self.config.mem_gb is None:
            limit, source = device["memory_bytes"], f"the {device['name'] or 'machine'}'s memory"
        else:
            limit, source = round(self.config.mem_gb * 2**30), f"the cluster config's mem_gb ({self.config.mem_gb:g})"
        result: dict[str, Any] = {
            "sweep": self.sweep_dir.name, "job_id": _job_id(), "host": socket.gethostname(), "started": _now(),
            "finished": None, "device": device, "versions": versions(), "time_limit_min": self.config.time_min,
            "memory_limit": {"bytes": limit, "source": source}, "kinds": {},
        }  # fmt: skip
        for key, kind in self.kinds.items():
            record = {name: kind[name] for name in ("experiment", "runs", "representative")}
            try:
                record |= measure_kind(kind["args"], self.evaluate)
                record["failure"] = self._failure(record, device, limit, source)
            except FileNotFoundError as error:
                record["failure"] = self._unreadable(error, kind)
            except Exception as error:
                out_of_memory = "out of memory" in str(error).lower()
                what = "does not fit in memory" if out_of_memory else "failed"
                record["failure"] = f"{what}: {type(error).__name__}: {str(error).strip().splitlines()[0][:400]}"
                record["traceback"] = traceback.format_exc()
            result["kinds"][key] = record
            result["finished"] = _now()
            write_json_atomic(self.sweep_dir / PREFLIGHT, result)
        return result

    @staticmethod
    def _failure(record: dict[str, Any], device: dict[str, Any], limit: int, source: str) -> str | None:
        failed = {spec: why for spec, why in record["self_check"].items() if why is not None}
        failed |= {
            f["specialisation"]: f["reason"] for session in record["paths"].values() for f in session["fallbacks"]
        }
        if failed:
            spec, why = next(iter(failed.items()))
            return (
                f"the fused inner net failed its self-check on {device['name'] or device['type']} ({spec}): {why}; "
                "the runs would take a slower torch path (see docs/gpu.md)"
            )
        return memory_failure(record["peak_memory_bytes"], limit, source)

    @staticmethod
    def _unreadable(error: FileNotFoundError, kind: dict[str, Any]) -> str:
        here = socket.gethostname()
        seen = [f"{need['name']} under {need['root']}" for need in kind["data"] if need["present"]]
        if seen:
            return (
                f"data unreadable on compute node {here} (working directory {Path.cwd()}): {error}. The login node "
                f"{kind['login_host']} sees {', '.join(seen)}: put the data on storage the compute nodes mount and "
                "point data.root (and evaluate's corruptions root) there, with an absolute path"
            )
        return f"data missing: {error}"


def preflight_kinds(
    sweep: Sweep, sweep_dir: Path, cluster: str, config: ClusterConfig, parse: Callable | None = None
) -> dict[str, dict[str, Any]]:
    """``{kind: what the job needs of it}``: the kind's first run's training arguments as the sweep submits them,
    its experiment and runs, and the data sets it reads as this (login) node sees them."""
    backend = cluster_backend(cluster)
    args = {run.relative_dir: run_args(run, sweep_dir, backend, config) for run in sweep.runs}
    configs = dict(zip(args, check_configs(list(args.values()), parse)))
    kinds: dict[str, dict[str, Any]] = {}
    for run, config_of_run in configs.items():
        key = run_kind(config_of_run, sweep.evaluate)
        if key in kinds:
            kinds[key]["runs"] += 1
            continue
        needs = data_needs({run: run_data(config_of_run)}, sweep.evaluate)
        absent = missing_data(needs)
        data = [{"name": n.name, "root": str(n.root), "present": n not in absent} for n in needs]
        kinds[key] = {"experiment": run.split("/", 1)[0], "runs": 1, "representative": run, "args": args[run],
                      "data": data, "login_host": socket.gethostname()}  # fmt: skip
    return kinds


def run_preflight(
    sweep: Sweep,
    cluster: str,
    config: ClusterConfig,
    out: Path,
    time_min: int,
    echo: Callable[[str], None] = print,
    parse: Callable | None = None,
) -> Preflight | None:
    """Submit the preflight job of ``sweep`` (one task, the cluster config's partition, GPUs and setup, ``time_min``
    minutes), wait for it and return what it wrote (None: it wrote nothing; its log says why)."""
    backend = cluster_backend(cluster)
    sweep_dir = out.resolve() / sweep.name
    config = dataclasses.replace(
        config, time_min=time_min, nodes=1, tasks_per_node=1, gpus_per_node=min(config.gpus_per_node, 1),
        array_parallelism=1, max_timeouts=0,
    )  # fmt: skip
    backend.check(config)
    checked_evaluate(sweep.evaluate)
    kinds = preflight_kinds(sweep, sweep_dir, cluster, config, parse)
    echo(f"preflight of sweep {sweep.name} on {cluster}: {len(kinds)} kinds of run, one job of at most {time_min} min")
    (sweep_dir / PREFLIGHT).unlink(missing_ok=True)  # a job that writes nothing must not leave an old one standing
    executor = backend.executor(config, sweep_dir / LOGS / "preflight" / "%j", f"ld-{sweep.name}-preflight")
    job = executor.submit(PreflightJob(sweep_dir, kinds, sweep.evaluate, config))
    echo(f"submitted preflight job {job.job_id}; waiting for it to write {sweep_dir / PREFLIGHT}")
    try:
        backend.after_submit([job])  # the debug backend runs it here
        job.result()
    except Exception as error:
        echo(f"preflight job {job.job_id} failed: {str(error).strip().splitlines()[-1]}; its log: {job.paths.stderr}")
    return read_preflight(sweep_dir)
