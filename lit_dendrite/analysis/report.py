"""The sweep report: ``<sweep_dir>/report.md`` with its PNG figures beside it.

Sections: clean test accuracy per condition, comparisons between conditions (Welch's t-test), learning curves
and learning speed, inner-net surfaces with the saddle statistics, learned one-argument activations (curves),
robustness where a run has robustness results.
A run that cannot be analysed is listed under "Problems" instead of stopping the report, and so is a finished run that
stayed at chance accuracy. Every per-run number the tables summarise comes back with the text (``SweepReport.per_run``)
so that ``collect`` writes it into ``summary.csv``, from which each table can be recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from lit_dendrite.analysis.tables import comparison_lines, markdown_table, mean_sd, net_panels
from lit_dendrite.data.datasets import DATASETS
from lit_dendrite.errors import MissingFile
from lit_dendrite.io import write_text_atomic
from lit_dendrite.runs import RESULT_FILE, SEARCH_DIR, RunDir, RunRecord, find_records

REPORT_NAME = "report.md"
LEARNING_CURVES_FIGURE = "learning_curves.png"
SPEED_FIGURE = "epochs_to_95_and_99_percent_of_final_accuracy.png"
ACCURACY_HEADING = "## Clean test accuracy"
# A finished run whose test accuracy is at most this multiple of guessing's (1 / classes) did not learn: on digits a
# 1-arg ResNet stayed at 7.5% (loss ln 10 throughout) while every other run reached 90% or more.
CHANCE_MULTIPLE = 1.5


def load_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every run under ``sweep_dir`` that has a record, named by its path in the sweep; an unreadable record, and a
    done one whose numbers cannot be used (:meth:`RunRecord.number_problems`), is kept as a failed run so that the
    report lists it under Problems. A search's trials (``search/``) are not compared: they trained with other
    hyperparameters than the final runs."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise MissingFile(f"sweep directory {sweep_dir} does not exist; pass the --out of the sweep")
    runs = []
    for path in find_records(sweep_dir):
        name = path.parent.relative_to(sweep_dir).as_posix()
        if name.startswith(f"{SEARCH_DIR}/"):
            continue
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


def accuracy_table(conditions: pd.DataFrame) -> pd.DataFrame:
    """:func:`summary_table` as the report shows it: test accuracy as ``mean ± sd`` in % with two decimals."""
    shown = conditions.assign(
        test_acc=[mean_sd(m, s) for m, s in zip(conditions["test_acc_mean"], conditions["test_acc_sd"])]
    )
    return shown[["condition", "dataset", "net", "neuron", "params", "n", "not_done", "test_acc"]].rename(
        columns={"test_acc": "test acc %"}
    )


def _accuracy_section(runs: Sequence[RunRecord], conditions: pd.DataFrame) -> list[str]:
    lines = [
        ACCURACY_HEADING,
        "",
        "Test accuracy in %, mean ± sd over the finished runs (n) of each "
        "condition; `params` is the network's parameter count. The paper gives clean accuracy as "
        f"{paper_numbers()['clean_accuracy']}, so there is no paper column here.",
        "",
    ]
    lines.append(markdown_table(accuracy_table(conditions)))
    values = runs_table([r for r in runs if r.done])[["condition", "test_acc"]].rename(columns={"test_acc": "value"})
    lines += ["", *comparison_lines(values, conditions, "test accuracy (%)", scale=100.0)]
    return lines


def _curves_section(
    sweep_dir: Path, runs: Sequence[RunRecord], conditions: pd.DataFrame, per_run: dict[str, dict[str, Any]]
) -> list[str]:
    lines = ["## Learning curves", ""]
    scalars = read_scalars(sweep_dir)
    # a run still training (or failed) has a partial curve, whose "final value" would make it look fast
    scalars = scalars[scalars["run"].isin({run.name for run in runs if run.done})]
    if scalars.empty or not scalars["tag"].isin(["val/acc", "val/loss"]).any():
        return [*lines, "No TensorBoard scalars val/acc or val/loss were found for the sweep's finished runs."]
    curves = learning_curves(scalars)
    figure = plots.learning_curve_figure(curves, session_offsets(scalars), net_panels(conditions))
    plots.save_figure(figure, sweep_dir / LEARNING_CURVES_FIGURE)
    speed = epochs_to_fraction(scalars)
    for row in speed.sort_values("session", key=lambda s: s.map(SESSIONS.index)).itertuples():
        numbers = {f"{column}.{row.session}": getattr(row, column) for column in speed if column.startswith("epochs")}
        per_run.setdefault(row.run, {}).update(numbers)
    summary = summarise_speed(speed)
    plots.save_figure(plots.speed_figure(summary), sweep_dir / SPEED_FIGURE)
    lines += [
        "Validation accuracy (%) and loss, mean ± sd over the finished runs, against epoch, one column per data set "
        "and net: session II (joint), then session III (frozen inner net, re-initialised outer net) after the "
        "dotted line of its condition.",
        "",
        f"![learning curves]({LEARNING_CURVES_FIGURE})",
        "",
        "### Learning speed",
        "",
        "Epochs until the validation accuracy first reaches 95% / 99% of its final value in the session, mean ± sd "
        "over runs (per run in `summary.csv`: `epochs_to_95.<session>`, `epochs_to_99.<session>`).",
        "",
        f"![learning speed]({SPEED_FIGURE})",
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


@dataclass(frozen=True)
class SweepReport:
    """A sweep's report text (its figures are written beside it) and, by run name, every per-run number its tables
    summarise (``summary.csv``'s analysis columns)."""

    sweep_dir: Path
    text: str
    per_run: dict[str, dict[str, Any]]

    def write(self) -> Path:
        """Write the text to ``<sweep_dir>/report.md`` atomically."""
        path = self.sweep_dir / REPORT_NAME
        write_text_atomic(path, self.text)
        return path


def build_report(sweep_dir: str | Path, grid: Grid = PAPER_GRID, n_images: int = SURFACE_IMAGES) -> SweepReport:
    """The report of ``sweep_dir`` from its run records, event and robustness files; its PNGs are written."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    if not runs:
        raise MissingFile(f"no {RESULT_FILE} under {sweep_dir}; run or collect the sweep first")
    conditions = summary_table(runs)
    stalled = [f"`{r.name}`: {r.get('error', 'no reason recorded')}" for r in runs if r.status == "stalled"]
    problems = [
        f"`{r.name}`: status {r.status!r}: {r.get('error', 'no error recorded')}"
        for r in runs
        if not r.done and r.status != "stalled"
    ]
    problems += chance_level_problems(runs)
    problems += [
        f"`{r.name}`: the inner net fell back from the fused op in {line}" for r in runs for line in r.path_fallbacks
    ]
    per_run: dict[str, dict[str, Any]] = {}
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(runs)} runs in {len(conditions)} conditions; {sum(r.done for r in runs)} finished. `sweep.py collect` "
        "writes every per-run number behind the tables into `summary.csv` (accuracies as fractions, like `test_acc`).",
        "",
    ]
    lines += [*_accuracy_section(runs, conditions), ""]
    lines += [*_curves_section(sweep_dir, runs, conditions, per_run), ""]
    lines += [*surface_section(sweep_dir, runs, problems, grid, n_images, per_run), ""]
    if curve_lines := curve_section(sweep_dir, runs, problems, n_images, per_run):
        lines += [*curve_lines, ""]
    lines += [*robustness_section(sweep_dir, runs, conditions, problems, per_run), ""]
    if stalled:
        lines += ["## Stalled runs", "", "Their training loss stayed at chance; they are in no table above.", ""]
        lines += [*(f"- {s}" for s in stalled), ""]
    if problems:
        lines += ["## Problems", "", *(f"- {p}" for p in problems), ""]
    return SweepReport(sweep_dir, "\n".join(lines).rstrip() + "\n", per_run)


def write_report(sweep_dir: str | Path, grid: Grid = PAPER_GRID, n_images: int = SURFACE_IMAGES) -> Path:
    """Write ``<sweep_dir>/report.md`` and its PNGs (see :func:`build_report`)."""
    return build_report(sweep_dir, grid, n_images).write()
