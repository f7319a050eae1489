"""The sweep report: ``<sweep_dir>/report.md`` with its PNG figures beside it.

Sections: clean test accuracy per condition, comparisons between conditions (Welch's t-test), learning curves
and learning speed, inner-net surfaces with the saddle statistics, learned one-argument activations (curves),
robustness where a run has robustness results.
A run that cannot be analysed is listed under "Problems" instead of stopping the report, and so is a finished run that
stayed at chance accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lit_dendrite.analysis import plots
from lit_dendrite.analysis.curves import (
    SESSIONS,
    epochs_to_fraction,
    learning_curves,
    read_scalars,
    session_offsets,
    summarise_speed,
)
from lit_dendrite.analysis.nonlinearity_report import SURFACE_IMAGES, curve_section, surface_section
from lit_dendrite.analysis.paper import paper_numbers
from lit_dendrite.analysis.robustness_report import robustness_section
from lit_dendrite.analysis.surfaces import PAPER_GRID, Grid
from lit_dendrite.analysis.tables import comparison_lines, markdown_table, mean_sd
from lit_dendrite.data.datasets import DATASETS
from lit_dendrite.errors import MissingFile
from lit_dendrite.io import write_text_atomic
from lit_dendrite.runs import RESULT_FILE, RunDir, RunRecord, find_records

REPORT_NAME = "report.md"
ACCURACY_HEADING = "## Clean test accuracy"
# A finished run whose test accuracy is at most this multiple of guessing's (1 / classes) did not learn: on digits a
# 1-arg ResNet stayed at 7.5% (loss ln 10 throughout) while every other run reached 90% or more.
CHANCE_MULTIPLE = 1.5


def load_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every run under ``sweep_dir`` that has a record, named by its path in the sweep; an unreadable record, and a
    done one whose numbers cannot be used (:meth:`RunRecord.number_problems`), is kept as a failed run so that the
    report lists it under Problems."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise MissingFile(f"sweep directory {sweep_dir} does not exist; pass the --out of the sweep")
    runs = []
    for path in find_records(sweep_dir):
        name = path.parent.relative_to(sweep_dir).as_posix()
        try:
            run = RunRecord.read(path.parent, name)
        except ValueError as error:
            run = RunRecord(RunDir(path.parent), {"status": "failed", "error": str(error)}, name)
        if problems := run.number_problems():
            error = f"{path.name} is done but {'; '.join(problems)}: left out of every table"
            run = RunRecord(run.dir, {**run.data, "status": "failed", "error": error}, name)
        runs.append(run)
    return runs


def runs_table(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: condition, name, status, dataset, net, neuron, num_params, test_acc, test_loss, seed."""
    fields = ["status", "dataset", "net", "neuron", "num_params", "test_acc", "test_loss", "seed"]
    rows = [{"condition": r.condition, "name": r.name, **{f: r.get(f) for f in fields}} for r in runs]
    return pd.DataFrame(rows, columns=["condition", "name", *fields])


def summary_table(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """Per condition: dataset, net, neuron, parameter count, finished runs n, other runs, test accuracy mean/sd."""
    table = runs_table(runs)
    rows = []
    for condition, group in table.groupby("condition", sort=True):
        done = group[group["status"] == "done"]
        known = done if not done.empty else group
        counts = sorted({int(p) for p in done["num_params"].dropna()})
        params = (counts[0] if len(counts) == 1 else f"{counts[0]}-{counts[-1]}") if counts else None
        rows.append(
            {
                "condition": condition,
                "dataset": known["dataset"].dropna().iloc[0] if known["dataset"].notna().any() else None,
                "net": known["net"].dropna().iloc[0] if known["net"].notna().any() else None,
                "neuron": known["neuron"].dropna().iloc[0] if known["neuron"].notna().any() else None,
                "params": params,
                "n": len(done),
                "not_done": len(group) - len(done),
                "test_acc_mean": done["test_acc"].astype(float).mean(),
                "test_acc_sd": done["test_acc"].astype(float).std(),
            }
        )
    return pd.DataFrame(rows)


def accuracy_section(report_text: str) -> str:
    """The clean-accuracy table of a written report (what ``make demo`` prints at its end)."""
    lines = report_text.splitlines()
    start = lines.index(ACCURACY_HEADING)
    table = [line for line in lines[start:] if line.startswith("|")]
    end = next((i for i in range(1, len(table)) if table[i].startswith("| condition |")), len(table))
    return "\n".join([ACCURACY_HEADING, *table[:end]])


def _accuracy_section(runs: Sequence[RunRecord], conditions: pd.DataFrame) -> list[str]:
    shown = conditions.assign(
        test_acc=[mean_sd(m, s) for m, s in zip(conditions["test_acc_mean"], conditions["test_acc_sd"])]
    )
    lines = [
        ACCURACY_HEADING,
        "",
        "Test accuracy in %, mean ± sd over the finished runs (n) of each "
        "condition; `params` is the network's parameter count. The paper gives clean accuracy as "
        f"{paper_numbers()['clean_accuracy']}, so there is no paper column here.",
        "",
    ]
    lines.append(
        markdown_table(shown[["condition", "dataset", "net", "neuron", "params", "n", "not_done", "test_acc"]])
    )
    values = runs_table([r for r in runs if r.done])[["condition", "test_acc"]].rename(columns={"test_acc": "value"})
    lines += ["", *comparison_lines(values, conditions, "test accuracy (%)", scale=100.0)]
    return lines


def _curves_section(sweep_dir: Path, runs: Sequence[RunRecord], conditions: pd.DataFrame) -> list[str]:
    lines = ["## Learning curves", ""]
    scalars = read_scalars(sweep_dir)
    # a run still training (or failed) has a partial curve, whose "final value" would make it look fast
    scalars = scalars[scalars["run"].isin({run.name for run in runs if run.done})]
    if scalars.empty or not scalars["tag"].isin(["val/acc", "val/loss"]).any():
        return [*lines, "No TensorBoard scalars val/acc or val/loss were found for the sweep's finished runs."]
    curves = learning_curves(scalars)
    plots.save_figure(plots.learning_curve_figure(curves, session_offsets(scalars)), sweep_dir / "report_curves.png")
    speed = epochs_to_fraction(scalars)
    summary = summarise_speed(speed)
    plots.save_figure(plots.speed_figure(summary), sweep_dir / "report_speed.png")
    lines += [
        "Validation accuracy and loss, mean ± sd over the finished runs, against epoch: session II (joint), then "
        "session III (frozen inner net, re-initialised outer net) after the dotted line.",
        "",
        "![learning curves](report_curves.png)",
        "",
        "### Learning speed",
        "",
        "Epochs until the validation accuracy first reaches 95% / 99% of its final value, mean ± sd over runs.",
        "",
        "![learning speed](report_speed.png)",
        "",
    ]
    shown = summary[["condition", "session"]].copy()
    for measure in ("epochs_to_95", "epochs_to_99"):
        shown[measure] = [mean_sd(m, s, 1.0, 1) for m, s in zip(summary[f"{measure}_mean"], summary[f"{measure}_sd"])]
    shown["n"] = summary["epochs_to_95_n"]
    lines += [markdown_table(shown), ""]
    for session in SESSIONS:
        part = speed[speed["session"] == session]
        if part["condition"].nunique() > 1:
            values = part[["condition", "epochs_to_99"]].rename(columns={"epochs_to_99": "value"})
            lines += [*comparison_lines(values, conditions, f"epochs to 99% of the final accuracy in {session}"), ""]
    return lines


def chance_level_problems(runs: Sequence[RunRecord]) -> list[str]:
    """A "Problems" line for each finished run whose test accuracy stayed near chance (``CHANCE_MULTIPLE``): such a
    run counts in its condition's statistics like any other, so the reader must be told that it did not learn."""
    lines = []
    for run in runs:
        if not run.done or run.test_acc is None or run.dataset not in DATASETS:
            continue
        chance = 1 / DATASETS[run.dataset].num_classes
        if run.test_acc <= CHANCE_MULTIPLE * chance:
            lines.append(
                f"`{run.name}`: test accuracy {100 * run.test_acc:.1f}% is at chance ({100 * chance:.3g}% by "
                "guessing): it did not learn, and it is counted in its condition's statistics"
            )
    return lines


def write_report(sweep_dir: str | Path, grid: Grid = PAPER_GRID, n_images: int = SURFACE_IMAGES) -> Path:
    """Write ``<sweep_dir>/report.md`` and its PNGs from the sweep's run records, event and robustness files."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    if not runs:
        raise MissingFile(f"no {RESULT_FILE} under {sweep_dir}; run or collect the sweep first")
    conditions = summary_table(runs)
    problems = [f"`{r.name}`: status {r.status!r}: {r.get('error', 'no error recorded')}" for r in runs if not r.done]
    problems += chance_level_problems(runs)
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(runs)} runs in {len(conditions)} conditions; {sum(r.done for r in runs)} finished.",
        "",
    ]
    lines += [*_accuracy_section(runs, conditions), ""]
    lines += [*_curves_section(sweep_dir, runs, conditions), ""]
    lines += [*surface_section(sweep_dir, runs, problems, grid, n_images), ""]
    if curve_lines := curve_section(sweep_dir, runs, problems, n_images):
        lines += [*curve_lines, ""]
    lines += [*robustness_section(sweep_dir, runs, conditions, problems), ""]
    if problems:
        lines += ["## Problems", "", *(f"- {p}" for p in problems), ""]
    path = sweep_dir / REPORT_NAME
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path
