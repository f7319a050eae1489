"""The run-name format that sweeps write and the analysis parses: ``key=value`` axes joined by commas."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_RUNS_ROOT = "runs"
SEED_AXIS = "seed"
NAME_SIGNIFICANT_DIGITS = 4


def name_value(value: Any) -> str:
    """Format an axis value for a run name: compact, no path separators or name delimiters."""
    if isinstance(value, (list, tuple)):
        return "-".join(name_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.{NAME_SIGNIFICANT_DIGITS}g}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value).replace("/", "_").replace(",", "_").replace("=", "_")


def run_name(axes: Iterable[tuple[str, str]]) -> str:
    """A run's name from its (short key, formatted value) axes, e.g. ``lr=0.001,seed=1``."""
    return ",".join(f"{key}={value}" for key, value in axes)


def parse_run_name(name: str) -> dict[str, str]:
    """The axes of a run name (``lr=0.001,seed=1`` -> ``{"lr": "0.001", "seed": "1"}``); other names have none."""
    parts = [part.partition("=") for part in name.split(",") if part]
    return {key: value for key, sep, value in parts if sep}


def condition_of(experiment: str, name: str) -> str:
    """The condition of a run: its experiment, plus its name's ``key=value`` parts other than the seed."""
    axes = [f"{key}={value}" for key, value in parse_run_name(name).items() if key != SEED_AXIS]
    return "/".join([experiment, ",".join(axes)]) if axes else experiment


VARIANT_AXIS = "variant"


def default_run_dir(experiment: str, seed: int, variant: str | None = None) -> Path:
    """Where ``train`` writes without ``--run_dir``: ``runs/<experiment>/seed=<seed>``, or for a variant of the
    experiment (a quick run) ``runs/<experiment>/variant=<variant>,seed=<seed>``, so that it never resumes the full
    run's directory."""
    axes = [(VARIANT_AXIS, name_value(variant))] if variant else []
    return Path(DEFAULT_RUNS_ROOT) / experiment / run_name([*axes, (SEED_AXIS, str(seed))])
