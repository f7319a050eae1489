"""Natural-robustness metrics (Hendrycks & Dietterich 2019) from accuracies per corruption and severity.

Accuracies are fractions in [0, 1] given as {corruption: {severity: accuracy}} (severity keys may be strings, as after
a JSON round trip); errors are E = 1 - accuracy. With a baseline network (by default the ReLU control):
    CE_c          = sum_s E(c, s) / sum_s E_base(c, s)                                  mCE = mean_c CE_c
    relative CE_c = sum_s (E(c, s) - E_clean) / sum_s (E_base(c, s) - E_base_clean)     relative mCE = mean_c
Ratios are fractions (0.913 is the paper's "91.3%"). A ratio is undefined (NaN) where the baseline makes no error
(CE) or its error does not rise over clean (relative CE), as on small easy sets like digits; the means leave such
corruptions out and :func:`corruption_report` names them, instead of one corruption voiding the whole figure.
"""

import math
from collections.abc import Mapping

from lit_dendrite.errors import ConfigError

Accuracies = Mapping[str, Mapping[int | str, float]]


def _normalised(accuracies: Accuracies, what: str) -> dict[str, dict[int, float]]:
    if not accuracies:
        raise ConfigError(f"{what}: no corruptions given")
    table = {}
    for corruption, by_severity in accuracies.items():
        if not by_severity:
            raise ConfigError(f"{what}: corruption {corruption!r} has no severities")
        table[corruption] = {int(s): _accuracy(a, f"{what} {corruption}/{s}") for s, a in by_severity.items()}
    return table


def _accuracy(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{what}: accuracy must be a fraction in [0, 1], got {value}")
    return value


def _paired(accuracies: Accuracies, baseline: Accuracies) -> tuple[dict, dict]:
    """Both tables normalised, with an error if their corruptions or severities differ."""
    ours, base = _normalised(accuracies, "accuracies"), _normalised(baseline, "baseline")
    if set(ours) != set(base):
        raise ConfigError(
            f"corruptions differ: only in accuracies {sorted(set(ours) - set(base))}, "
            f"only in baseline {sorted(set(base) - set(ours))}; evaluate both on the same corruptions"
        )
    for corruption in ours:
        if set(ours[corruption]) != set(base[corruption]):
            raise ConfigError(
                f"severities of {corruption!r} differ: accuracies {sorted(ours[corruption])}, "
                f"baseline {sorted(base[corruption])}; evaluate both on the same severities"
            )
    return ours, base


def mean_accuracy_per_corruption(accuracies: Accuracies) -> dict[str, float]:
    """Accuracy averaged over severities, per corruption."""
    table = _normalised(accuracies, "accuracies")
    return {c: sum(by_severity.values()) / len(by_severity) for c, by_severity in table.items()}


def mean_corruption_accuracy(accuracies: Accuracies) -> float:
    """Accuracy averaged over severities, then over corruptions."""
    per_corruption = mean_accuracy_per_corruption(accuracies)
    return sum(per_corruption.values()) / len(per_corruption)


def corruption_errors(accuracies: Accuracies, baseline: Accuracies) -> dict[str, float]:
    """CE_c: errors summed over severities, divided by the baseline's; NaN where the baseline makes no error."""
    ours, base = _paired(accuracies, baseline)
    errors = {}
    for corruption, by_severity in ours.items():
        base_error = sum(1.0 - a for a in base[corruption].values())
        errors[corruption] = sum(1.0 - a for a in by_severity.values()) / base_error if base_error > 0 else math.nan
    return errors


def _defined_mean(ratios: Mapping[str, float]) -> float:
    """Mean of the defined ratios; NaN when none is defined."""
    defined = [v for v in ratios.values() if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def mean_corruption_error(accuracies: Accuracies, baseline: Accuracies) -> float:
    """mCE: CE_c averaged over the corruptions where it is defined (NaN if it is defined on none)."""
    return _defined_mean(corruption_errors(accuracies, baseline))


def relative_corruption_errors(
    accuracies: Accuracies, clean_accuracy: float, baseline: Accuracies, baseline_clean_accuracy: float
) -> dict[str, float]:
    """Relative CE_c: the rise of error over clean, divided by the baseline's; NaN where the baseline's error does not
    rise (the ratio is then undefined)."""
    ours, base = _paired(accuracies, baseline)
    clean_error = 1.0 - _accuracy(clean_accuracy, "clean_accuracy")
    base_clean_error = 1.0 - _accuracy(baseline_clean_accuracy, "baseline_clean_accuracy")
    errors = {}
    for corruption, by_severity in ours.items():
        base_rise = sum((1.0 - a) - base_clean_error for a in base[corruption].values())
        rise = sum((1.0 - a) - clean_error for a in by_severity.values())
        errors[corruption] = rise / base_rise if base_rise > 0 else math.nan
    return errors


def relative_mean_corruption_error(
    accuracies: Accuracies, clean_accuracy: float, baseline: Accuracies, baseline_clean_accuracy: float
) -> float:
    """Relative mCE: relative CE_c averaged over the corruptions where it is defined (NaN if on none)."""
    return _defined_mean(relative_corruption_errors(accuracies, clean_accuracy, baseline, baseline_clean_accuracy))


def corruption_report(
    accuracies: Accuracies,
    clean_accuracy: float,
    baseline: Accuracies | None = None,
    baseline_clean_accuracy: float | None = None,
) -> dict:
    """Every metric above in one JSON-ready dict (undefined ratios as None, and the corruptions each mean left out
    named); the CE entries need a baseline."""
    table = _normalised(accuracies, "accuracies")
    report = {
        "clean_accuracy": _accuracy(clean_accuracy, "clean_accuracy"),
        "accuracy": {c: {str(s): a for s, a in sorted(by.items())} for c, by in table.items()},
        "mean_accuracy_per_corruption": mean_accuracy_per_corruption(table),
        "mean_corruption_accuracy": mean_corruption_accuracy(table),
    }
    if baseline is None:
        return report
    if baseline_clean_accuracy is None:
        raise ConfigError("a baseline needs its clean accuracy too (baseline_clean_accuracy) for the relative mCE")
    errors = corruption_errors(table, baseline)
    relative = relative_corruption_errors(table, clean_accuracy, baseline, baseline_clean_accuracy)
    report |= {
        "corruption_error": _json_ratios(errors),
        "mCE": _json_ratio(_defined_mean(errors)),
        "mCE_excluded": sorted(c for c, v in errors.items() if math.isnan(v)),
        "relative_corruption_error": _json_ratios(relative),
        "relative_mCE": _json_ratio(_defined_mean(relative)),
        "relative_mCE_excluded": sorted(c for c, v in relative.items() if math.isnan(v)),
    }
    return report


def _json_ratio(value: float) -> float | None:
    return None if math.isnan(value) else value


def _json_ratios(ratios: Mapping[str, float]) -> dict[str, float | None]:
    return {c: _json_ratio(v) for c, v in ratios.items()}
