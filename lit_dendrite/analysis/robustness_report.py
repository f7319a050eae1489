"""Robustness sections of the sweep report, from each run's ``robustness.json``.

The paper's Table 1 (robust accuracy under its attack, rows data set x net, columns 2-arg / 1-arg / ReLU, the
published value beside each measured one), the corruption tables and robust accuracy against epsilon.

Corruption metrics are computed here from the accuracies each run recorded, against the ReLU control of the same
data set and net (its accuracies averaged over its runs): mCE over the benchmark corruptions (CIFAR-10-C's 15,
MNIST-C's 15; the extra ones are reported separately), relative mCE over the corruptions where the control's
error rises above its clean error (the others are excluded, counted and named: the ratio is undefined there).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind

from lit_dendrite.analysis.paper import NEURONS, paper_numbers, published_corruption, published_robust_accuracy
from lit_dendrite.analysis.plots import save_figure
from lit_dendrite.analysis.robustness_plots import robustness_figure
from lit_dendrite.analysis.tables import (
    CONTROL_NEURON,
    WELCH,
    compare_conditions,
    comparison_lines,
    markdown_table,
    mean_sd,
    net_panels,
    slug,
)
from lit_dendrite.data.corrupted import CIFAR_C_BENCHMARK, MNIST_C_CORRUPTIONS
from lit_dendrite.robustness.corruption import corruption_errors, relative_corruption_errors
from lit_dendrite.robustness.store import REFUSED
from lit_dendrite.runs import is_number

if TYPE_CHECKING:
    from lit_dendrite.runs import RunRecord

NEURON_HEADINGS = {"2arg": "2-arg", "1arg": "1-arg", "relu": "ReLU"}
GROUP = ["dataset", "net", "variant"]
CORRUPTION_FIGURE = "mean_corruption_accuracy_vs_severity.png"
CORRUPTION_METRICS = {"accuracy": "corruption_accuracy", "mce": "mCE", "relative_mce": "relative_mCE"}
CORRUPTION_METRICS |= {"mce_extra": "mCE_extra"}  # summary.csv's column of each per-run corruption metric


def attack_figure_name(attack: str) -> str:
    """The file of an attack's robust accuracy against epsilon over the sweep."""
    return f"robust_accuracy_vs_epsilon_{slug(attack)}.png"


def robust_accuracy_column(attack: str, epsilon: float) -> str:
    """summary.csv's column of a run's robust accuracy under ``attack`` at ``epsilon``."""
    return f"robust_acc.{attack}.eps={epsilon:g}"


def control_differences(rows: pd.DataFrame, x: str, value: str, conditions: pd.DataFrame) -> pd.DataFrame:
    """Each condition's mean ``value`` minus its control's at each ``x`` (Welch's comparison, see
    :func:`compare_conditions`): columns condition, versus, x, difference, se."""
    parts = []
    for at, part in rows.groupby(x):
        compared = compare_conditions(part[["condition", value]].rename(columns={value: "value"}), conditions)
        parts.append(compared.assign(x=at)[["condition", "versus", "x", "difference", "se"]])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["condition", "versus", "x"])


def benchmark_corruptions(spec: str) -> tuple[str, ...]:
    """The corruptions a set's mCE averages over: MNIST-C's 15, else CIFAR-10-C's 15 (also the generated sets')."""
    return MNIST_C_CORRUPTIONS if spec == "mnist_c" else CIFAR_C_BENCHMARK


def _variant(condition: str) -> str:
    """A condition's axis values other than the seed (empty for a plain experiment)."""
    return condition.split("/", 1)[1] if "/" in condition else ""


def robustness_rows(runs: Sequence[RunRecord], problems: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long tables of every finished run's robustness.json: (adversarial, corruption) rows; a damaged file is a
    problem, not an error."""
    adversarial, corruption = [], []
    for run in runs:
        path = run.dir.robustness
        if not run.done or not path.exists():
            continue
        try:
            robustness = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            problems.append(f"`{run.name}`: unreadable {path.name}: {error}")
            continue
        if not isinstance(robustness, dict):
            problems.append(f"`{run.name}`: {path.name} holds {type(robustness).__name__}, not a JSON object")
            continue
        meta = {
            "condition": run.condition,
            "run": run.name,
            "dataset": run.dataset,
            "net": run.net,
            "neuron": run.neuron,
            "variant": _variant(run.condition),
        }
        section = robustness.get("corruptions") or {}
        clean = (robustness.get("clean") or {}).get("accuracy", run.test_acc)
        table = section.get("accuracy") or {}
        if bad := _bad_corruption_numbers(table):
            problems.append(f"`{run.name}`: {path.name} corruptions.accuracy{bad}; its corruptions are left out")
            table = {}
        for name, severities in table.items():
            for severity, value in severities.items():
                corruption.append(
                    {
                        **meta,
                        "spec": str(section.get("spec", "")),
                        "corruption": name,
                        "severity": int(severity),
                        "accuracy": float(value),
                        "clean": float(clean) if is_number(clean) else np.nan,
                    }
                )
        for attack, result in (robustness.get("adversarial") or {}).items():
            if isinstance(result, dict) and REFUSED in result:
                problems.append(f"`{run.name}`: {attack} refused, left out of its tables: {result[REFUSED]}")
                continue
            if bad := _bad_attack_numbers(result):
                problems.append(f"`{run.name}`: {path.name} adversarial.{attack}{bad}; left out of its tables")
                continue
            reported = (result.get("reported") or {}).get("epsilon")
            for eps, value in zip(result["epsilons"], result["robust_accuracy"]):
                adversarial.append(
                    {
                        **meta,
                        "attack": attack,
                        "epsilon": float(eps),
                        "robust_accuracy": float(value),
                        "reported": float(reported) if is_number(reported) else np.nan,
                    }
                )
    return pd.DataFrame(adversarial), pd.DataFrame(corruption)


def _bad_corruption_numbers(table: Any) -> str | None:
    """Where a ``corruptions.accuracy`` table (``{corruption: {severity: accuracy}}``) holds something other than
    finite numbers (as ``.<corruption>.<severity> is <value>``), or None."""
    if not isinstance(table, dict):
        return f" is {table!r}, not a table"
    for name, severities in table.items():
        if not isinstance(severities, dict):
            return f".{name} is {severities!r}, not a table of severities"
        for severity, value in severities.items():
            if not str(severity).isdigit() or not is_number(value):
                return f".{name}.{severity} is {value!r}, not a finite number"
    return None


def _bad_attack_numbers(result: Any) -> str | None:
    """Where an attack's result lacks finite ``epsilons`` and ``robust_accuracy`` of equal length (as
    ``.<field>[i] is <value>``), or None."""
    if not isinstance(result, dict):
        return f" is {result!r}, not a result"
    for key in ("epsilons", "robust_accuracy"):
        values = result.get(key)
        if not isinstance(values, list) or not values:
            return f".{key} is {values!r}, not a list of numbers"
        for index, value in enumerate(values):
            if not is_number(value):
                return f".{key}[{index}] is {value!r}, not a finite number"
    if len(result["epsilons"]) != len(result["robust_accuracy"]):
        return ".robust_accuracy does not have one value per epsilon"
    return None


def table_one(adversarial: pd.DataFrame, attack: str) -> pd.DataFrame:
    """The paper's Table 1 from measured robust accuracies of ``attack`` at its reported epsilon.

    One row per data set x net (x other axes); per neuron the measured ``mean ± sd (n)`` in % beside the
    published value, and Welch's p of 2-arg and 1-arg against ReLU.
    """
    chosen = adversarial[
        (adversarial["attack"] == attack) & np.isclose(adversarial["epsilon"], adversarial["reported"])
    ]
    rows = []
    for (dataset, net, variant), group in chosen.groupby(GROUP, sort=False):
        published = published_robust_accuracy(dataset, net) or {}
        row: dict[str, Any] = {"data set": dataset, "net": net}
        if variant:
            row["axes"] = variant
        row["eps"] = f"{group['epsilon'].iloc[0]:.4g}"
        values = {n: group[group["neuron"] == n]["robust_accuracy"].astype(float) for n in NEURONS}
        for neuron in NEURONS:
            v = values[neuron]
            heading = NEURON_HEADINGS[neuron]
            row[heading] = f"{mean_sd(v.mean(), v.std())} (n={len(v)})" if len(v) else "–"
            row[f"{heading} paper"] = f"{published[neuron]:.2f}" if neuron in published else "–"
        for neuron in ("2arg", "1arg"):
            a, b = values[neuron], values[CONTROL_NEURON]
            testable = len(a) >= 2 and len(b) >= 2 and (a.var() > 0 or b.var() > 0)
            p = float(ttest_ind(a, b, equal_var=False).pvalue) if testable else math.nan
            row[f"p {NEURON_HEADINGS[neuron]} vs ReLU"] = "–" if math.isnan(p) else f"{p:.3g}"
        rows.append(row)
    return pd.DataFrame(rows)


def _table_one_lines(adversarial: pd.DataFrame) -> list[str]:
    numbers = paper_numbers()
    attack = numbers["robust_accuracy"]["attack"]
    lines = ["### Table 1: robust accuracy", ""]
    if adversarial.empty or attack not in set(adversarial["attack"]):
        return [*lines, f"No run was evaluated with `{attack}`, the paper's attack; see the attacks below.", ""]
    table = table_one(adversarial, attack)
    return [
        *lines,
        f"Robust accuracy (%) under `{attack}` at the paper's epsilon, mean ± sd over runs (n), beside the "
        f"paper's value (`paper`). p: {WELCH}, against the ReLU control.",
        "",
        markdown_table(table),
        "",
        f"Paper values: {numbers['source']} {numbers['note']}",
        "",
    ]


def corruption_metrics(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run: benchmark accuracy, mCE, mCE of the extra corruptions, relative mCE (fractions); per data set x net
    group: which corruptions the relative mCE excludes (the control's error does not rise there) and which the
    mCE excludes (the control makes no error there).

    The baseline is the ReLU control of the same data set, net and other axes, averaged over its runs; groups
    without one get accuracies only.
    """
    per_run, groups = [], []
    for (dataset, net, variant, spec), group in rows.groupby([*GROUP, "spec"], sort=False):
        benchmark = [c for c in benchmark_corruptions(spec) if c in set(group["corruption"])]
        extra = sorted(set(group["corruption"]) - set(benchmark))
        control = group[group["neuron"] == CONTROL_NEURON]
        base = _accuracy_table(control) if not control.empty else None
        base_clean = control.groupby("run")["clean"].first().mean() if not control.empty else math.nan
        zero_error = sorted(c for c in benchmark + extra if base and all(a >= 1.0 for a in base[c].values()))
        no_rise: list[str] = []
        for (condition, run), runs in group.groupby(["condition", "run"], sort=False):
            table, clean = _accuracy_table(runs), float(runs["clean"].iloc[0])
            record = {"condition": condition, "run": run, "dataset": dataset, "net": net, "variant": variant}
            record["neuron"] = runs["neuron"].iloc[0]
            record["accuracy"] = float(np.mean([np.mean(list(table[c].values())) for c in benchmark or extra]))
            record |= {"mce": math.nan, "mce_extra": math.nan, "relative_mce": math.nan}
            if base is not None:
                record["mce"] = _mean_ce(table, base, [c for c in benchmark if c not in zero_error])
                record["mce_extra"] = _mean_ce(table, base, [c for c in extra if c not in zero_error])
                chosen = {c: table[c] for c in benchmark}
                relative = relative_corruption_errors(chosen, clean, {c: base[c] for c in benchmark}, base_clean)
                no_rise = sorted(c for c, v in relative.items() if math.isnan(v))
                defined = [v for v in relative.values() if not math.isnan(v)]
                record["relative_mce"] = float(np.mean(defined)) if defined else math.nan
            per_run.append(record)
        groups.append(
            {
                "dataset": dataset,
                "net": net,
                "variant": variant,
                "spec": spec,
                "benchmark": benchmark,
                "extra": extra,
                "baseline": base is not None,
                "excluded_relative": no_rise,
                "excluded_mce": zero_error,
            }
        )
    return pd.DataFrame(per_run), pd.DataFrame(groups)


def _accuracy_table(rows: pd.DataFrame) -> dict[str, dict[int, float]]:
    """{corruption: {severity: accuracy}} averaged over the rows' runs."""
    means = rows.groupby(["corruption", "severity"])["accuracy"].mean()
    table: dict[str, dict[int, float]] = {}
    for (corruption, severity), value in means.items():
        table.setdefault(corruption, {})[int(severity)] = float(value)
    return table


def _mean_ce(table: dict, base: dict, corruptions: list[str]) -> float:
    if not corruptions:
        return math.nan
    errors = corruption_errors({c: table[c] for c in corruptions}, {c: base[c] for c in corruptions})
    return float(np.mean(list(errors.values())))


def _corruption_lines(
    sweep_dir: Path, rows: pd.DataFrame, metrics: tuple[pd.DataFrame, pd.DataFrame], conditions: pd.DataFrame
) -> list[str]:
    per_run, groups = metrics
    lines = [
        "### Corruptions",
        "",
        "Per condition, mean ± sd over runs (n), in %: accuracy averaged over the benchmark corruptions and their "
        "severities; mCE (Hendrycks & Dietterich 2019) over the benchmark corruptions and, separately, over the "
        "extra ones; relative mCE over the benchmark corruptions where the control's error rises. The baseline "
        "(100 %) is the ReLU control of the same data set and net, its error averaged over its runs.",
        "",
    ]
    stats = per_run.groupby("condition", sort=True)
    shown = pd.DataFrame({"condition": list(stats.groups), "n": stats["run"].count().to_numpy()})
    for column, heading in (
        ("accuracy", "accuracy"),
        ("mce", "mCE"),
        ("relative_mce", "relative mCE"),
        ("mce_extra", "mCE extra"),
    ):
        shown[heading] = [mean_sd(m, s) for m, s in zip(stats[column].mean(), stats[column].std())]
    first = stats.first()
    published = [
        published_corruption(first.loc[c, "dataset"], first.loc[c, "net"], first.loc[c, "neuron"])
        for c in shown["condition"]
    ]
    shown["mCE paper"] = [f"{p['mCE']:.1f}" if p else "–" for p in published]
    shown["relative mCE paper"] = [f"{p['relative_mCE']:.1f}" if p else "–" for p in published]
    lines += [markdown_table(shown), ""]
    for group in groups.itertuples():
        where = _group_label(group)
        if not group.baseline:
            lines.append(f"- {where}: no ReLU control evaluated on these corruptions, so no mCE.")
            continue
        lines.append(
            f"- {where}: mCE over {len(group.benchmark) - len(group.excluded_mce)} benchmark corruptions"
            + (f" and {len(group.extra)} extra ({', '.join(group.extra)})" if group.extra else "")
            + (
                f"; the control makes no error on {', '.join(group.excluded_mce)}, excluded"
                if group.excluded_mce
                else ""
            )
            + f"; relative mCE excludes {len(group.excluded_relative)} of {len(group.benchmark)}"
            + (
                f" ({', '.join(group.excluded_relative)}): the control's error does not rise there"
                if group.excluded_relative
                else ""
            )
            + "."
        )
    if any(published_corruption(d, n, "2arg") for d, n in zip(groups["dataset"], groups["net"])):
        lines += ["", f"Paper values: {paper_numbers()['source']} As published."]
    lines += ["", *_per_corruption_lines(rows, groups), ""]
    by_severity = rows.groupby(["condition", "run", "severity"])["accuracy"].mean().reset_index()
    levels = by_severity.groupby(["condition", "severity"])["accuracy"].agg(mean="mean", sd="std", n="count")
    figure = robustness_figure(
        levels.reset_index().rename(columns={"severity": "x"}),
        control_differences(by_severity, "severity", "accuracy", conditions),
        net_panels(conditions),
        "severity",
        "accuracy, mean over corruptions",
        "Accuracy under corruptions against their severity",
    )
    save_figure(figure, sweep_dir / CORRUPTION_FIGURE)
    lines += [
        "Accuracy (mean over the corruptions) against severity, one column per data set and net; beneath, each "
        "condition minus the ReLU control in percentage points.",
        "",
        f"![accuracy vs severity]({CORRUPTION_FIGURE})",
        "",
    ]
    values = per_run[["condition", "mce"]].rename(columns={"mce": "value"})
    if values["value"].notna().any():
        lines += [*comparison_lines(values, conditions, "mCE (%)", scale=100.0), ""]
    return lines


def _group_label(group: Any) -> str:
    """``data set / net [/ axes] [(corrupted set)]`` of a corruption group."""
    label = f"{group.dataset} / {group.net}" + (f" / {group.variant}" if group.variant else "")
    return label + (f" ({group.spec})" if group.spec else "")


def _per_corruption_lines(rows: pd.DataFrame, groups: pd.DataFrame) -> list[str]:
    """Accuracy (%) per corruption (mean over severities, then mean ± sd over runs), one table per group."""
    lines = ["#### Accuracy per corruption", ""]
    per_run = rows.groupby([*GROUP, "spec", "condition", "run", "corruption"])["accuracy"].mean().reset_index()
    for group in groups.itertuples():
        key = (group.dataset, group.net, group.variant, group.spec)
        part = per_run[[tuple(k) == key for k in per_run[[*GROUP, "spec"]].itertuples(index=False)]]
        stats = part.groupby(["corruption", "condition"])["accuracy"].agg(["mean", "std"]).reset_index()
        stats["cell"] = [mean_sd(m, s) for m, s in zip(stats["mean"], stats["std"])]
        wide = stats.pivot(index="corruption", columns="condition", values="cell")
        order = [*group.benchmark, *group.extra]
        wide = wide.reindex(order).reset_index()
        wide["corruption"] = [c if c in group.benchmark else f"{c} (extra)" for c in order]
        lines += [f"{_group_label(group)}:", "", markdown_table(wide), ""]
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
        image = attack_figure_name(attack)
        figure = robustness_figure(
            stats.rename(columns={"epsilon": "x", "std": "sd", "count": "n"}),
            control_differences(part, "epsilon", "robust_accuracy", conditions),
            net_panels(conditions),
            "epsilon (L-inf, pixels in [0, 1])" if "linf" in attack.lower() else "epsilon",
            "robust accuracy",
            f"{attack}: robust accuracy against epsilon",
        )
        save_figure(figure, sweep_dir / image)
        wide = stats.assign(cell=[mean_sd(m, s) for m, s in zip(stats["mean"], stats["std"])])
        wide = wide.pivot(index="condition", columns="epsilon", values="cell").reset_index()
        wide.columns = ["condition", *(f"eps={e:g}" for e in wide.columns[1:])]
        lines += [f"#### {attack}", "", markdown_table(wide), "", f"![{attack}]({image})", ""]
        reported = part[part["epsilon"] == part["reported"]]
        if not reported.empty:
            eps = reported["epsilon"].iloc[0]
            values = reported[["condition", "robust_accuracy"]].rename(columns={"robust_accuracy": "value"})
            lines += [*comparison_lines(values, conditions, f"{attack} robust accuracy (%) at eps={eps:g}", 100.0), ""]
        by_epsilon = epsilon_comparison(part, conditions)
        if not by_epsilon.empty:
            lines += [
                f"{attack} at every epsilon: robust accuracy minus the control's (percentage points), with the p of "
                f"{WELCH} (where every run is at 0, as on digits at large epsilons, there is nothing to compare).",
                "",
                markdown_table(by_epsilon),
                "",
            ]
    return lines


def epsilon_comparison(rows: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """One attack's robust accuracy against the control at each epsilon > 0: rows (condition, versus), a column per
    epsilon holding ``difference (p)`` in percentage points (Welch's test, ``–`` where it cannot be computed)."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for eps, at in rows[rows["epsilon"] > 0].groupby("epsilon"):
        values = at[["condition", "robust_accuracy"]].rename(columns={"robust_accuracy": "value"})
        for row in compare_conditions(values, conditions).itertuples():
            p = "–" if np.isnan(row.p) else f"{row.p:.3g}"
            cells.setdefault((row.condition, row.versus), {})[f"eps={eps:g}"] = f"{100 * row.difference:+.2f} (p {p})"
    return pd.DataFrame([{"condition": a, "versus": b, **by_eps} for (a, b), by_eps in cells.items()])


def robustness_numbers(adversarial: pd.DataFrame, corruption: pd.DataFrame, per_run: pd.DataFrame) -> dict:
    """``{run: {summary.csv column: value}}``: robust accuracy per attack and epsilon, the corruption metrics
    (:data:`CORRUPTION_METRICS`) and the accuracy per corruption (``corruption_acc.<name>``, mean over severities)."""
    numbers: dict[str, dict[str, Any]] = {}
    for row in adversarial.itertuples():
        numbers.setdefault(row.run, {})[robust_accuracy_column(row.attack, row.epsilon)] = row.robust_accuracy
    for row in per_run.itertuples():
        numbers.setdefault(row.run, {}).update({name: getattr(row, key) for key, name in CORRUPTION_METRICS.items()})
    if not corruption.empty:
        for (run, name), value in corruption.groupby(["run", "corruption"])["accuracy"].mean().items():
            numbers.setdefault(run, {})[f"corruption_acc.{name}"] = value
    return numbers


def robustness_section(
    sweep_dir: Path,
    runs: Sequence[RunRecord],
    conditions: pd.DataFrame,
    problems: list[str],
    per_run: dict[str, dict[str, Any]],
) -> list[str]:
    """The report's robustness section (empty where no run has a robustness.json); its per-run numbers go into
    ``per_run``."""
    adversarial, corruption = robustness_rows(runs, problems)
    if adversarial.empty and corruption.empty:
        return []
    metrics = corruption_metrics(corruption) if not corruption.empty else (pd.DataFrame(), pd.DataFrame())
    for run, numbers in robustness_numbers(adversarial, corruption, metrics[0]).items():
        per_run.setdefault(run, {}).update(numbers)
    columns = ", ".join(f"`{name}`" for name in CORRUPTION_METRICS.values())
    lines = [
        "## Robustness",
        "",
        f"Per run in `summary.csv`: `{robust_accuracy_column('<attack>', 0).replace('=0', '=<eps>')}` for every "
        f"attack and epsilon; {columns} and `corruption_acc.<corruption>` (mean over severities).",
        "",
    ]
    lines += _table_one_lines(adversarial)
    if not corruption.empty:
        lines += _corruption_lines(sweep_dir, corruption, metrics, conditions)
    if not adversarial.empty:
        lines += _adversarial_lines(sweep_dir, adversarial, conditions)
    return lines
