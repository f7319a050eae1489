"""A sweep's plan on one screen, printed before anything is submitted: runs per experiment and their GPU-hours, and
the data sets its jobs will read, where, and which are missing, with the command that fetches them.

A job reads a relative ``data.root`` (or ``corruptions.root``) from the directory the sweep is submitted from (Slurm
and the local backend start jobs there), so each root is resolved against the working directory of the submission.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_dendrite.data.corrupted import parse_spec
from lit_dendrite.data.datasets import DATASETS
from lit_dendrite.data.fetch import EMBEDDED, GENERATED, fetch, missing, plan
from lit_dendrite.sweeps.cost import Estimate
from lit_dendrite.sweeps.evaluation import settings_for
from lit_dendrite.sweeps.preflight import PREFLIGHT, Preflight, kind_key
from lit_dendrite.sweeps.spec import Sweep

FETCH_COMMAND = "python launch/sweep.py fetch-data --sweep {sweep}"
PREFLIGHT_COMMAND = "python launch/sweep.py preflight --sweep {sweep} --cluster {cluster}"


@dataclass(frozen=True)
class RunData:
    """The clean data set one run trains on: its name, the root its job reads it from, and whether the job
    downloads it itself (``data.download``)."""

    dataset: str
    root: str
    download: bool = False


@dataclass(frozen=True)
class DataNeed:
    """One data set the jobs read under one root (absolute), the runs that read it and the clean sets they train on
    (what a generated set is made from), and whether every one of those jobs downloads it itself."""

    name: str
    root: Path
    runs: tuple[str, ...]
    made_from: tuple[str, ...]
    clean_root: Path
    downloaded_by_jobs: bool = False

    @property
    def role(self) -> str:
        return "clean" if self.name in DATASETS else "corrupted"


def data_needs(runs: Mapping[str, RunData], evaluate: dict[str, Any] | None) -> list[DataNeed]:
    """Every data set the jobs of ``runs`` read: each run's clean set under its root and, with an ``evaluate:``
    section, the corrupted set its data set is evaluated on; clean sets first, in the runs' order."""
    found: dict[tuple[str, Path], dict[str, Any]] = {}

    def add(name: str, root: Path, run: str, data: RunData, downloads: bool) -> None:
        need = found.setdefault((name, root), {"runs": [], "made_from": [], "clean_root": Path(data.root).resolve(),
                                               "downloads": True})  # fmt: skip
        need["runs"].append(run)
        need["made_from"] += [] if data.dataset in need["made_from"] else [data.dataset]
        need["downloads"] &= downloads

    for run, data in runs.items():
        add(data.dataset, Path(data.root).resolve(), run, data, data.download)
    for run, data in runs.items():
        corruptions = settings_for(evaluate, data.dataset)["corruptions"] if evaluate else None
        if corruptions:
            kind, root = parse_spec(corruptions["spec"], corruptions["root"])
            add(kind, root.resolve(), run, data, False)
    return [
        DataNeed(name, root, tuple(need["runs"]), tuple(need["made_from"]), need["clean_root"], need["downloads"])
        for (name, root), need in found.items()
    ]


def missing_data(needs: Sequence[DataNeed]) -> dict[DataNeed, str]:
    """``{need: what is wrong}`` of the data sets not complete under their root (see :func:`fetch.missing`)."""
    return {need: problem for need in needs if (problem := missing(need.name, need.root)) is not None}


def fetch_command(sweep_path: Path) -> str:
    """The command that fetches every data set of the sweep file, as a person types it from here."""
    return FETCH_COMMAND.format(sweep=_shown(sweep_path))


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _state(need: DataNeed, problem: str | None) -> str:
    if problem is None:
        return "embedded" if need.name in EMBEDDED else "present"
    return f"{problem} (each job downloads it: data.download true)" if need.downloaded_by_jobs else problem


def data_lines(needs: Sequence[DataNeed], problems: Mapping[DataNeed, str], sweep_path: Path) -> list[str]:
    """The data section of the plan: each data set with its role, runs, root and state, then the fetch command
    when one is missing."""
    if not needs:
        return ["Data sets the jobs read: none (no run to submit)"]
    absent = [need for need in needs if need in problems]
    counted = f"{len(absent)} of {len(needs)} missing" if absent else "all present"
    lines = [f"Data sets the jobs read: {counted} (relative roots are read from the directory you submit from)"]
    width = max((len(need.name) for need in needs), default=0)
    for need in needs:
        label = "generated" if need.name == GENERATED else need.name
        lines.append(
            f"  {label:<{width}}  {need.role:<9}  {len(need.runs):>4} runs  {need.root}  "
            f"{_state(need, problems.get(need))}"
        )
    if any(not need.downloaded_by_jobs for need in absent):
        lines.append("Fetch them on a login node before submitting (downloads, checks the published md5s, unpacks):")
        lines.append(f"  {fetch_command(sweep_path)}")
    return lines


def refusal(problems: Mapping[DataNeed, str], sweep_path: Path) -> str | None:
    """Why a real submission must not go ahead (a data set missing where jobs that do not download it will read
    it), with the fix; None when nothing is missing."""
    blocking = {need: problem for need, problem in problems.items() if not need.downloaded_by_jobs}
    if not blocking:
        return None
    listed = "\n".join(f"  {n.name} ({n.role}, read by {len(n.runs)} run(s)) under {n.root}: {p}"
                       for n, p in blocking.items())  # fmt: skip
    return (
        f"{len(blocking)} data set(s) missing where the jobs will read them; nothing was submitted:\n{listed}\n"
        f"fetch them first (on a login node, or here): {fetch_command(sweep_path)}"
    )


def summary_lines(
    sweep: Sweep,
    sweep_dir: Path,
    cluster: str,
    to_submit: Sequence[str],
    cost: Estimate | str,
    needs: Sequence[DataNeed],
    problems: Mapping[DataNeed, str],
) -> list[str]:
    """The plan's first screen: the sweep, its GPU-hours, the data section, then runs per experiment (to submit,
    epochs, GPU-hours) with their total; what decides a submission comes first, whatever the number of experiments.
    ``cost`` is the estimate, or why there is none."""
    runs, submitting = {}, {}
    for run in sweep.runs:
        runs[run.experiment] = runs.get(run.experiment, 0) + 1
    for run in to_submit:
        experiment = run.rsplit("/", 1)[0]
        submitting[experiment] = submitting.get(experiment, 0) + 1
    lines = [
        f"sweep {sweep.name} ({_shown(sweep.path)}) on {cluster}: {len(sweep.runs)} runs, {len(to_submit)} to submit "
        f"-> {sweep_dir}"
    ]
    if isinstance(cost, Estimate):
        assumed = f" ({cost.measured_by})" if cost.measured_by else ""
        if cost.assumed_speedup:
            assumed += f" (ASSUMING a GPU {cost.assumed_speedup:g}x faster than the CPU benchmark: --gpu-speedup)"
        lines.append(f"  {cost.total_hours:.1f} GPU-hours for all {len(sweep.runs)} runs{assumed}")
    else:
        lines.append(f"  GPU-hours: {cost}")
    lines += data_lines(needs, problems, sweep_path=sweep.path)
    width = max(len("experiment"), *(len(name) for name in runs))
    walls = isinstance(cost, Estimate) and cost.measured_by is not None and cost.time_min is not None
    lines.append(
        f"  {'experiment':<{width}}  {'runs':>5}  {'to submit':>9}  {'epochs II/III':>13}  {'train h':>7}  "
        f"{'evaluate h':>10}" + (f"  {'h per run':>9}  {'requeues':>8}  measured" if walls else "")
    )
    estimated = {row["experiment"]: row for row in cost.rows} if isinstance(cost, Estimate) else {}
    rows = [(name, count, submitting.get(name, 0), estimated.get(name)) for name, count in runs.items()]
    if estimated:
        total = {"epochs": "", **{key: sum(row[key] for row in cost.rows) for key in ("train_h", "evaluate_h")}}
        rows.append(("total", len(sweep.runs), len(to_submit), total))
    for name, count, to_do, row in rows:
        hours = f"  {row['epochs']:>13}  {row['train_h']:>7.1f}  {row['evaluate_h']:>10.1f}" if row else ""
        if walls and row and "run_h" in row:
            hours += f"  {row['run_h']:>9.2f}  {row['requeues']:>8}  {row['measured']}/{count}"
        lines.append(f"  {name:<{width}}  {count:>5}  {to_do:>9}{hours}")
    if walls and any(row["requeues"] for row in cost.rows):
        lines.append(
            f"  runs longer than the cluster's time_min ({cost.time_min} min) are requeued and resume from last.ckpt "
            "(max_timeouts in the cluster config must allow the requeues listed)"
        )
    return lines


def run_kind(config: Any, evaluate: dict[str, Any] | None) -> str:
    """A run's kind of run (:func:`~lit_dendrite.sweeps.preflight.kind_key`) from its parsed configuration."""
    net, dataset = config.model.net, str(config.data.dataset)
    settings = settings_for(evaluate, dataset) if evaluate else None
    return kind_key(net.class_path, net.init_args.neuron, dataset, config.trainer.precision, settings)


def preflight_command(sweep_path: Path, cluster: str) -> str:
    """The command that runs a sweep file's preflight, as a person types it from here."""
    return PREFLIGHT_COMMAND.format(sweep=_shown(sweep_path), cluster=cluster)


def preflight_refused(preflight: Preflight | None, kinds: Mapping[str, str], force: bool) -> dict[str, str]:
    """``{run: why}`` of the runs not to submit because the preflight of their kind failed (none with ``force``)."""
    failures = preflight.failures() if preflight is not None and not force else {}
    return {run: f"preflight failed: {failures[kind]}" for run, kind in kinds.items() if kind in failures}


def preflight_lines(
    preflight: Preflight | None, kinds: set[str], sweep_path: Path, cluster: str, force: bool
) -> list[str]:
    """The plan's preflight section: what it measured and which kinds failed (and are not submitted, unless
    ``force``), or, once, that none was run and how to run it."""
    if preflight is None:
        return [
            f"No preflight of this sweep was run ({PREFLIGHT} beside its runs): one short job that proves each kind of "
            "run on a compute node and measures its cost. Run it first:",
            f"  {preflight_command(sweep_path, cluster)}",
        ]
    lines = preflight.lines(kinds)
    if any(kind in preflight.failures() for kind in kinds):
        lines.append(
            "  the failed kinds' runs are SUBMITTED all the same (--force)"
            if force
            else "  their runs are not submitted; fix the cause and rerun the preflight, or pass --force to submit them"
        )
    return lines


def fetch_needs(
    needs: Sequence[DataNeed],
    root: Path | None = None,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    **fetch_options: Any,
) -> list[str]:
    """Fetch every data set of ``needs`` (clean sets first, as a generated set is made from one) into its own root,
    or all but generated sets into ``root``; ``dry_run``: say what is present (checksums verified) and what would be
    fetched. Returns, to be reported, where a set went that is not where the jobs read it."""
    elsewhere = []
    for need in needs:
        if need.name == GENERATED and len(need.made_from) > 1:
            raise ValueError(
                f"the generated set {need.root} is read by runs of {list(need.made_from)}; a generated set holds one "
                "data set's test images: give each data set its own generated set under evaluate.datasets"
            )
        target = need.root if root is None or need.name == GENERATED else root.resolve()
        clean_root = root.resolve() if root is not None else need.clean_root
        if dry_run:
            echo(plan(need.name, target, need.made_from[0], clean_root).line)
            continue
        fetch(need.name, target, need.made_from[0], clean_root, echo=echo, **fetch_options)
        if target != need.root:
            elsewhere.append(f"{need.name}: fetched into {target}, the jobs read {need.root}")
    return elsewhere


def run_data(config: Any) -> RunData:
    """A run's :class:`RunData` from its parsed configuration (``lit_dendrite.cli.parse(...).config``)."""
    return RunData(str(config.data.dataset), str(config.data.root), bool(config.data.download))
