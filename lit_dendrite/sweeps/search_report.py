"""The search's section of a sweep report: per condition the best trial and its configuration, the optimisation
history and Optuna's parameter importances, each with a figure. The comparison that follows in the report is of the
final runs only (trials are left out of it, :func:`lit_dendrite.analysis.report.load_runs`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lit_dendrite.analysis.plots import save_figure
from lit_dendrite.analysis.report import SweepReport
from lit_dendrite.sweeps.search import SearchSpec, counted, open_study, params_values, read_search

HISTORY_FIGURE = "search_history.png"
IMPORTANCE_FIGURE = "search_importances.png"


def _history_figure(studies: dict[str, Any], spec: SearchSpec) -> Figure:
    """Each condition's trials by number (dots: complete, crosses: pruned at their last reported value) and its
    best value so far (a step line)."""
    import optuna

    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    best_of = min if spec.direction == "minimize" else max
    shown: list[float] = []
    for index, (experiment, study) in enumerate(studies.items()):
        color = f"C{index}"
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
        pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
        at_pruning = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        axes.scatter([t.number for t in complete], [t.value for t in complete], color=color, s=18, label=experiment)
        axes.scatter([t.number for t in pruned], at_pruning, color=color, marker="x", s=18)
        shown += [t.value for t in complete] + [v for v in at_pruning if math.isfinite(v)]
        best, steps = None, []
        for trial in sorted(complete, key=lambda t: t.number):
            best = trial.value if best is None else best_of(best, trial.value)
            steps.append((trial.number, best))
        if steps:
            axes.step(*zip(*steps), where="post", color=color, linewidth=1.5)
    if shown and min(shown) > 0 and max(shown) > 10 * min(shown):
        axes.set_yscale("log")  # pruned trials sit far above the complete ones, which a linear axis flattens
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial number (crosses: pruned, at their last reported epoch)")
    axes.set_ylabel(spec.objective)
    axes.set_title(
        f"Optimisation history: each trial and the best so far ({spec.sampler}, {spec.trials} per condition)"
    )
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=max(1, len(studies)), frameon=False)
    return figure


def _importances(study: Any) -> dict[str, float] | str:
    """Optuna's parameter importances (fANOVA) of a study, or why there are none."""
    import optuna

    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    except (RuntimeError, ValueError) as error:
        return f"not available ({error})"


def _importance_figure(importances: dict[str, dict[str, float]], spec: SearchSpec) -> Figure:
    """Grouped horizontal bars: each searched key's importance in each condition's study."""
    figure = Figure(figsize=(8, 1.2 + 0.8 * len(spec.space)))
    axes = figure.subplots()
    keys = list(spec.space)
    height = 0.8 / max(1, len(importances))
    for index, (experiment, values) in enumerate(importances.items()):
        positions = [k + index * height for k in range(len(keys))]
        axes.barh(positions, [values.get(key, 0.0) for key in keys], height=height, color=f"C{index}", label=experiment)
    axes.set_yticks([k + 0.4 - height / 2 for k in range(len(keys))], keys)
    axes.invert_yaxis()
    axes.set_xlabel("importance (Optuna's fANOVA; each condition's importances sum to 1)")
    axes.set_title("Which searched keys decided the objective, per condition")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def search_section(sweep_dir: Path) -> list[str]:
    """The report's search section (its figures written into ``sweep_dir``); empty for a sweep without a search."""
    searched = read_search(sweep_dir)
    if searched is None:
        return []
    spec, experiments = searched
    sweep = sweep_dir.name
    studies = {name: open_study(spec, sweep_dir, sweep, name) for name in experiments}
    lines = [
        "## Hyperparameter search",
        "",
        f"Each condition was tuned by its own Optuna study over the same space with the same budget ({spec.trials} "
        f"trials, sampler {spec.sampler}, pruner {spec.pruner}), {spec.direction} `{spec.objective}`; the "
        "comparison below is of each condition's best configuration retrained on the sweep's seeds (the final runs).",
        "",
        "| condition | trials | best trial | best value | configuration |",
        "|---|---|---|---|---|",
    ]
    importances: dict[str, dict[str, float]] = {}
    notes = []
    for experiment, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        counts = ", ".join(f"{n} {state}" for state, n in sorted(counted(trials).items()))
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        best = study.best_trial if complete else None
        shown = (
            ("-", "-", "-") if best is None else (best.number, f"{best.value:.4g}", params_values(best.params, spec))
        )
        lines.append(f"| {experiment} | {counts} | {shown[0]} | {shown[1]} | `{shown[2]}` |")
        found = _importances(study)
        if isinstance(found, str):
            notes.append(f"- {experiment}: parameter importances {found}")
        else:
            importances[experiment] = found
    save_figure(_history_figure(studies, spec), sweep_dir / HISTORY_FIGURE)
    lines += ["", f"![optimisation history]({HISTORY_FIGURE})", ""]
    if importances:
        save_figure(_importance_figure(importances, spec), sweep_dir / IMPORTANCE_FIGURE)
        lines += [f"![parameter importances]({IMPORTANCE_FIGURE})", ""]
    return [*lines, *notes, *([""] if notes else [])]


def with_search_section(report: SweepReport) -> SweepReport:
    """``report`` with the search section after its title and first paragraph (unchanged without a search)."""
    section = search_section(report.sweep_dir)
    if not section:
        return report
    head, _, rest = report.text.partition("\n## ")
    return dataclasses.replace(report, text="\n".join([head.rstrip(), "", *section]) + "\n## " + rest)
