"""Tables of the sweep report: markdown rendering, mean ± sd cells and Welch's comparison with the ReLU control."""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind

CONTROL_NEURON = "relu"
WELCH = "Welch's two-sided t-test on per-run values (scipy.stats.ttest_ind, equal_var=False)"
COMPARISON_COLUMNS = ["condition", "versus", "mean", "mean_versus", "difference", "n", "n_versus", "t", "p"]


def net_panels(conditions: pd.DataFrame) -> dict[str, str]:
    """``{condition: "<data set> / <net>"}`` from a per-condition table (``summary_table``): the panel each condition
    is drawn in, so that a figure compares the neurons of one net."""
    return {row.condition: f"{row.dataset} / {row.net}" for row in conditions.itertuples()}


def compare_conditions(values: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """Welch's t-test of per-run ``value`` between conditions of the same dataset and net.

    ``values`` has columns condition, value; ``conditions`` has condition, dataset, net, neuron. Each condition
    is compared with the ReLU control of its dataset and net, or, where ``values`` have none, with every other one.
    ``se`` is the standard error of the difference of the means (Welch's denominator).
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
                    "se": float(np.sqrt(va.var() / len(va) + vb.var() / len(vb))),  # Welch's; NaN for one run
                }
            )
    return pd.DataFrame(rows, columns=[*COMPARISON_COLUMNS, "se"])


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


def mean_sd(mean: float, sd: float, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± sd`` scaled (default: fractions as %), just the mean without an sd, ``–`` without a mean."""
    if np.isnan(mean):
        return "–"
    return f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}" if not np.isnan(sd) else f"{mean * scale:.{digits}f}"


def slug(name: str) -> str:
    """A file-name-safe version of a condition or attack name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def comparison_lines(values: pd.DataFrame, conditions: pd.DataFrame, what: str, scale: float = 1.0) -> list[str]:
    compared = compare_conditions(values, conditions)[COMPARISON_COLUMNS]
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
