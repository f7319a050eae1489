"""The sweep report: ``<sweep_dir>/report.md`` with its PNG figures beside it.

Sections: clean test accuracy per condition, comparisons between conditions (Welch's t-test), learning curves
and learning speed, inner-net surfaces with the saddle statistics, robustness where a run has robustness results.
A run that cannot be analysed is listed under "Problems" instead of stopping the report.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import ttest_ind

from lit_dendrite.analysis import plots
from lit_dendrite.analysis.curves import (
    SESSIONS,
    epochs_to_fraction,
    learning_curves,
    read_scalars,
    session_offsets,
    summarise_speed,
)
from lit_dendrite.analysis.surfaces import PAPER_GRID, Grid, Surface, find_inner_net
from lit_dendrite.analysis.xor import XorAnalysis, analyse_net, angular_power, initial_surfaces, saddle_statistics
from lit_dendrite.io import write_text_atomic
from lit_dendrite.runs import RESULT_FILE, RunDir, RunRecord, UntrustedRecord, find_records

REPORT_NAME = "report.md"
ACCURACY_HEADING = "## Clean test accuracy"
CONTROL_NEURON = "relu"
WELCH = "Welch's two-sided t-test on per-run values (scipy.stats.ttest_ind, equal_var=False)"


def load_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every run under ``sweep_dir`` that has a record, named by its path in the sweep; an unreadable record is
    kept as a failed run so that the report lists it."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist; pass the --out of the sweep")
    runs = []
    for path in find_records(sweep_dir):
        name = path.parent.relative_to(sweep_dir).as_posix()
        try:
            runs.append(RunRecord.read(path.parent, name))
        except ValueError as error:
            runs.append(RunRecord(RunDir(path.parent), {"status": "failed", "error": str(error)}, name))
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


def compare_conditions(values: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """Welch's t-test of per-run ``value`` between conditions of the same dataset and net.

    ``values`` has columns condition, value; ``conditions`` has condition, dataset, net, neuron. Each condition
    is compared with the ReLU control of its dataset and net, or, where ``values`` have none, with every other one.
    """
    rows = []
    conditions = conditions[conditions["condition"].isin(values["condition"])]
    for _, group in conditions.groupby(["dataset", "net"], dropna=False):
        controls = group[group["neuron"] == CONTROL_NEURON]["condition"].tolist()
        others = group[group["neuron"] != CONTROL_NEURON]["condition"].tolist()
        if controls:
            pairs = [(a, b) for b in controls for a in others]
        else:
            pairs = list(itertools.combinations(sorted(group["condition"]), 2))
        for a, b in pairs:
            va = values[values["condition"] == a]["value"].dropna().astype(float)
            vb = values[values["condition"] == b]["value"].dropna().astype(float)
            if len(va) == 0 or len(vb) == 0:
                continue
            testable = len(va) >= 2 and len(vb) >= 2 and (va.var() > 0 or vb.var() > 0)
            test = ttest_ind(va, vb, equal_var=False) if testable else None
            rows.append(
                {
                    "condition": a,
                    "versus": b,
                    "mean": va.mean(),
                    "mean_versus": vb.mean(),
                    "difference": va.mean() - vb.mean(),
                    "n": len(va),
                    "n_versus": len(vb),
                    "t": float(test.statistic) if test else np.nan,
                    "p": float(test.pvalue) if test else np.nan,
                }
            )
    return pd.DataFrame(
        rows, columns=["condition", "versus", "mean", "mean_versus", "difference", "n", "n_versus", "t", "p"]
    )


def markdown_table(table: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """A GitHub-flavoured markdown table; ``formats`` maps columns to format specs (e.g. ``".3f"``)."""
    formats = formats or {}

    def cell(column: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "–"
        return format(value, formats[column]) if column in formats else str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(cell(c, v) for c, v in zip(table.columns, row)) + " |" for row in table.itertuples(False)
    ]
    return "\n".join(lines)


def _mean_sd(mean: float, sd: float, scale: float = 100.0, digits: int = 2) -> str:
    if np.isnan(mean):
        return "–"
    return f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}" if not np.isnan(sd) else f"{mean * scale:.{digits}f}"


def _slug(name: str) -> str:
    """A file-name-safe version of a condition or attack name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def accuracy_section(report_text: str) -> str:
    """The clean-accuracy table of a written report (what ``make demo`` prints at its end)."""
    lines = report_text.splitlines()
    start = lines.index(ACCURACY_HEADING)
    table = [line for line in lines[start:] if line.startswith("|")]
    end = next((i for i in range(1, len(table)) if table[i].startswith("| condition |")), len(table))
    return "\n".join([ACCURACY_HEADING, *table[:end]])


def _accuracy_section(runs: Sequence[RunRecord], conditions: pd.DataFrame) -> list[str]:
    shown = conditions.assign(
        test_acc=[_mean_sd(m, s) for m, s in zip(conditions["test_acc_mean"], conditions["test_acc_sd"])]
    )
    lines = [
        ACCURACY_HEADING,
        "",
        "Test accuracy in %, mean ± sd over the finished runs (n) of each "
        "condition; `params` is the network's parameter count.",
        "",
    ]
    lines.append(
        markdown_table(shown[["condition", "dataset", "net", "neuron", "params", "n", "not_done", "test_acc"]])
    )
    values = runs_table([r for r in runs if r.done])[["condition", "test_acc"]].rename(columns={"test_acc": "value"})
    lines += ["", *_comparison_lines(values, conditions, "test accuracy (%)", scale=100.0)]
    return lines


def _comparison_lines(values: pd.DataFrame, conditions: pd.DataFrame, what: str, scale: float = 1.0) -> list[str]:
    compared = compare_conditions(values, conditions)
    if compared.empty:
        return [f"No pair of conditions of the same dataset and net to compare on {what}."]
    for column in ("mean", "mean_versus", "difference"):
        compared[column] = compared[column] * scale
    formats = {"mean": ".2f", "mean_versus": ".2f", "difference": "+.2f", "t": ".2f", "p": ".3g"}
    return [
        f"Comparison of {what}: {WELCH}; p is missing where a side has fewer than 2 runs.",
        "",
        markdown_table(compared, formats),
    ]


def _curves_section(sweep_dir: Path, conditions: pd.DataFrame) -> list[str]:
    lines = ["## Learning curves", ""]
    scalars = read_scalars(sweep_dir)
    if scalars.empty or not scalars["tag"].isin(["val/acc", "val/loss"]).any():
        return [*lines, "No TensorBoard scalars val/acc or val/loss were found under the sweep."]
    curves = learning_curves(scalars)
    plots.save_figure(plots.learning_curve_figure(curves, session_offsets(scalars)), sweep_dir / "report_curves.png")
    speed = epochs_to_fraction(scalars)
    summary = summarise_speed(speed)
    plots.save_figure(plots.speed_figure(summary), sweep_dir / "report_speed.png")
    lines += [
        "Validation accuracy and loss, mean ± sd over runs, against epoch: session II (joint), then "
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
        shown[measure] = [_mean_sd(m, s, 1.0, 1) for m, s in zip(summary[f"{measure}_mean"], summary[f"{measure}_sd"])]
    shown["n"] = summary["epochs_to_95_n"]
    lines += [markdown_table(shown), ""]
    for session in SESSIONS:
        part = speed[speed["session"] == session]
        if part["condition"].nunique() > 1:
            values = part[["condition", "epochs_to_99"]].rename(columns={"epochs_to_99": "value"})
            lines += [*_comparison_lines(values, conditions, f"epochs to 99% of the final accuracy in {session}"), ""]
    return lines


@lru_cache(maxsize=4)
def _test_images(dataset: str, root: str) -> np.ndarray:
    from lit_dendrite.data.datasets import load_arrays

    return load_arrays(dataset, root, train=False)[0]


def run_test_images(run: RunRecord, n_images: int = 1000) -> np.ndarray:
    """The first ``n_images`` test images (uint8, N x H x W x C) of the run's data set, from its data root."""
    return _test_images(run.dataset, str(run.data_root))[:n_images]


@dataclass(frozen=True)
class RunSurface:
    """A run's XOR analysis and the mean l = 2 power share of Xavier-initialised inner nets on its region."""

    run: RunRecord
    analysis: XorAnalysis
    initial_l2: float


def analyse_surfaces(
    runs: Sequence[RunRecord], grid: Grid = PAPER_GRID, n_images: int = 1000
) -> tuple[list[RunSurface], list[str]]:
    """Load every finished 2-arg run's net and analyse its surface on test data; failures come back as messages."""
    from lit_dendrite.models import load_net

    surfaces, problems = [], []
    baselines: dict[tuple[int, ...], list[Surface]] = {}
    for run in runs:
        if not run.done or run.neuron != "2arg":
            continue
        try:
            net = load_net(run.dir.path)
            analysis = analyse_net(net, run_test_images(run, n_images), grid)
        except UntrustedRecord:  # never reported as one run's problem: the caller must stop
            raise
        except Exception as error:  # a broken run must not hide the others
            problems.append(f"`{run.name}`: surface analysis failed: {type(error).__name__}: {error}")
            continue
        hidden = find_inner_net(net).hidden
        if hidden not in baselines:
            baselines[hidden] = initial_surfaces(grid, hidden)
        initial = np.mean([angular_power(s, analysis.region).fraction[2] for s in baselines[hidden]])
        surfaces.append(RunSurface(run, analysis, float(initial)))
    return surfaces, problems


def surface_statistics(surfaces: Sequence[RunSurface]) -> pd.DataFrame:
    """Per condition: saddles out of n, their fraction, the binomial p, mean R^2 and l = 2 power shares."""
    rows = []
    for condition in sorted({s.run.condition for s in surfaces}):
        group = [s for s in surfaces if s.run.condition == condition]
        stats = saddle_statistics([s.analysis.fit.is_saddle for s in group])
        rows.append(
            {
                "condition": condition,
                "saddles": f"{stats.saddles}/{stats.n}",
                "fraction": stats.fraction,
                "binomial_p": stats.p_value,
                "mean_R2": float(np.mean([s.analysis.fit.r_squared for s in group])),
                "mean_R2_gain": float(
                    np.mean([s.analysis.fit.r_squared - s.analysis.fit.linear_r_squared for s in group])
                ),
                "l2_power": float(np.mean([s.analysis.harmonics.fraction[2] for s in group])),
                "l2_power_xavier": float(np.mean([s.initial_l2 for s in group])),
            }
        )
    return pd.DataFrame(rows)


def gallery(surfaces: Sequence[RunSurface], condition: str) -> Figure:
    """The surface gallery of one condition, panels labelled by run name."""
    chosen = [(s.run.name.split("/")[-1], s.analysis) for s in surfaces if s.run.condition == condition]
    return plots.surface_gallery(chosen)


def _surface_section(
    sweep_dir: Path, runs: Sequence[RunRecord], problems: list[str], grid: Grid, n_images: int
) -> list[str]:
    lines = ["## Inner-net surfaces: soft XOR?", ""]
    surfaces, failures = analyse_surfaces(runs, grid, n_images)
    problems += failures
    if not surfaces:
        return [*lines, "No finished run with a two-argument inner net (neuron `2arg`) could be analysed."]
    images = sorted({len(run_test_images(s.run, n_images)) for s in surfaces})
    lines += [
        "Each panel: the trained inner net on the grid, the white outline enclosing the region that holds 90% of "
        f"the input pairs reaching it (all layers) on {' / '.join(map(str, images))} test images. Inside the region "
        "a least-squares quadratic c0 x² + c1 y² + c2 xy + c3 x + c4 y + c5 is fitted; a saddle (4 c0 c1 − c2² < 0) "
        "is a soft XOR. R2 gain: the quadratic fit's R² minus the best plane's (near 0: a nearly planar surface, "
        "whose saddle verdict rests on little curvature). p: two-sided binomial test of P(saddle) = 0.5 "
        "(scipy.stats.binomtest). l=2 power: share of the centred surface's power in the second angular harmonic, "
        "trained vs 20 Xavier-initialised inner nets on the same regions.",
        "",
    ]
    formats = {"fraction": ".2f", "binomial_p": ".3g", "l2_power": ".3f", "l2_power_xavier": ".3f"}
    formats |= {"mean_R2": ".3f", "mean_R2_gain": ".3f"}
    table = surface_statistics(surfaces)
    lines += [markdown_table(table, formats), ""]
    for condition in table["condition"]:
        image = f"report_surfaces_{_slug(condition)}.png"
        plots.save_figure(gallery(surfaces, condition), sweep_dir / image)
        lines += [f"### {condition}", "", f"![surfaces of {condition}]({image})", ""]
    return lines


def _robustness_section(
    sweep_dir: Path, runs: Sequence[RunRecord], conditions: pd.DataFrame, problems: list[str]
) -> list[str]:
    corruption_rows, adversarial_rows = [], []
    for run in runs:
        path = run.dir.robustness
        if not run.done or not path.exists():
            continue
        try:
            robustness = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"`{run.name}`: unreadable {path.name}: {error}")
            continue
        corruption = robustness.get("corruptions") or {}
        for name, severities in (corruption.get("accuracy") or {}).items():
            for severity, value in severities.items():
                corruption_rows.append(
                    {
                        "condition": run.condition,
                        "run": run.name,
                        "corruption": name,
                        "severity": int(severity),
                        "accuracy": float(value),
                        "mce": corruption.get("mCE"),
                        "relative_mce": corruption.get("relative_mCE"),
                    }
                )
        for attack, result in (robustness.get("adversarial") or {}).items():
            for eps, value in zip(result.get("epsilons", []), result.get("robust_accuracy", [])):
                adversarial_rows.append(
                    {
                        "condition": run.condition,
                        "run": run.name,
                        "attack": attack,
                        "epsilon": float(eps),
                        "robust_accuracy": float(value),
                        "reported": float((result.get("reported") or {}).get("epsilon", np.nan)),
                    }
                )
    if not corruption_rows and not adversarial_rows:
        return []
    lines = ["## Robustness", ""]
    if corruption_rows:
        lines += _corruption_lines(sweep_dir, pd.DataFrame(corruption_rows), conditions)
    if adversarial_rows:
        lines += _adversarial_lines(sweep_dir, pd.DataFrame(adversarial_rows), conditions)
    return lines


def _corruption_lines(sweep_dir: Path, rows: pd.DataFrame, conditions: pd.DataFrame) -> list[str]:
    per_run = (
        rows.groupby(["condition", "run"])
        .agg(accuracy=("accuracy", "mean"), mce=("mce", "first"), relative_mce=("relative_mce", "first"))
        .reset_index()
    )
    table = (
        per_run.groupby("condition")
        .agg(
            n=("run", "count"),
            acc_mean=("accuracy", "mean"),
            acc_sd=("accuracy", "std"),
            mce_mean=("mce", "mean"),
            mce_sd=("mce", "std"),
            rel_mean=("relative_mce", "mean"),
            rel_sd=("relative_mce", "std"),
        )
        .reset_index()
    )
    shown = pd.DataFrame(
        {
            "condition": table["condition"],
            "n": table["n"],
            "mean corruption accuracy (%)": [_mean_sd(m, s) for m, s in zip(table["acc_mean"], table["acc_sd"])],
            "mCE (%)": [_mean_sd(m, s) for m, s in zip(table["mce_mean"], table["mce_sd"])],
            "relative mCE (%)": [_mean_sd(m, s) for m, s in zip(table["rel_mean"], table["rel_sd"])],
        }
    )
    by_severity = rows.groupby(["condition", "run", "severity"])["accuracy"].mean().reset_index()
    stats = by_severity.groupby(["condition", "severity"])["accuracy"].agg(["mean", "std"]).reset_index()
    curves = {c: (g["severity"], g["mean"], g["std"]) for c, g in stats.groupby("condition")}
    figure = plots.curve_figure(curves, "severity", "accuracy (mean over corruptions)", "Accuracy under corruptions")
    plots.save_figure(figure, sweep_dir / "report_corruptions.png")
    lines = [
        "### Corruptions",
        "",
        "Accuracy averaged over corruptions and severities; mCE and relative mCE (Hendrycks & Dietterich "
        "2019) against the baseline recorded in each run's robustness results (by default the ReLU control).",
        "",
        markdown_table(shown),
        "",
        "![accuracy vs severity](report_corruptions.png)",
        "",
    ]
    values = per_run[["condition", "mce"]].rename(columns={"mce": "value"})
    if values["value"].notna().any():
        lines += [*_comparison_lines(values, conditions, "mCE (%)", scale=100.0), ""]
    return lines


def _adversarial_lines(sweep_dir: Path, rows: pd.DataFrame, conditions: pd.DataFrame) -> list[str]:
    lines = [
        "### Adversarial attacks",
        "",
        "Robust accuracy (%) against the attack's epsilon, mean ± sd over runs.",
        "",
    ]
    for attack, part in rows.groupby("attack"):
        stats = part.groupby(["condition", "epsilon"])["robust_accuracy"].agg(["mean", "std", "count"]).reset_index()
        curves = {c: (g["epsilon"], g["mean"], g["std"]) for c, g in stats.groupby("condition")}
        image = f"report_attack_{_slug(attack)}.png"
        figure = plots.curve_figure(curves, "epsilon", "robust accuracy", f"{attack}: robust accuracy vs epsilon")
        plots.save_figure(figure, sweep_dir / image)
        wide = stats.assign(cell=[_mean_sd(m, s) for m, s in zip(stats["mean"], stats["std"])])
        wide = wide.pivot(index="condition", columns="epsilon", values="cell").reset_index()
        wide.columns = ["condition", *(f"eps={e:g}" for e in wide.columns[1:])]
        lines += [f"#### {attack}", "", markdown_table(wide), "", f"![{attack}]({image})", ""]
        reported = part[part["epsilon"] == part["reported"]]
        if not reported.empty:
            eps = reported["epsilon"].iloc[0]
            values = reported[["condition", "robust_accuracy"]].rename(columns={"robust_accuracy": "value"})
            lines += [*_comparison_lines(values, conditions, f"{attack} robust accuracy (%) at eps={eps:g}", 100.0), ""]
    return lines


def write_report(sweep_dir: str | Path, grid: Grid = PAPER_GRID, n_images: int = 1000) -> Path:
    """Write ``<sweep_dir>/report.md`` and its PNGs from the sweep's run records, event and robustness files."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no {RESULT_FILE} under {sweep_dir}; run or collect the sweep first")
    conditions = summary_table(runs)
    problems = [f"`{r.name}`: status {r.status!r}: {r.get('error', 'no error recorded')}" for r in runs if not r.done]
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(runs)} runs in {len(conditions)} conditions; {sum(r.done for r in runs)} finished.",
        "",
    ]
    lines += [*_accuracy_section(runs, conditions), ""]
    lines += [*_curves_section(sweep_dir, conditions), ""]
    lines += [*_surface_section(sweep_dir, runs, problems, grid, n_images), ""]
    lines += [*_robustness_section(sweep_dir, runs, conditions, problems), ""]
    if problems:
        lines += ["## Problems", "", *(f"- {p}" for p in problems), ""]
    path = sweep_dir / REPORT_NAME
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path
