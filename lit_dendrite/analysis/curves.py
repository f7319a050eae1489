"""Learning curves of a whole sweep from its TensorBoard event files (read with tbparse).

Layout: ``<sweep_dir>/<experiment>/<key=value,...>/<session>/...events...``. A condition is an experiment
(dataset x net x neuron) with its run name's axis values other than the seed; runs differing only in the seed
are repeats. Sessions II (joint) and III (frozen inner net) share one epoch axis: session III starts after the
longest session II of its condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tbparse import SummaryReader

from lit_dendrite.runs import FROZEN, JOINT, condition_of

SESSIONS = (JOINT, FROZEN)
SESSION_NAMES = {JOINT: "session II: joint training", FROZEN: "session III: frozen inner net, new outer net"}


def _locate(dir_name: str) -> tuple[str, str, str] | None:
    """``(condition, run, session)`` of an event directory relative to the sweep, or None outside a session."""
    parts = PurePosixPath(dir_name.replace("\\", "/")).parts
    for index, part in enumerate(parts):
        if part in SESSIONS:
            run = "/".join(parts[:index]) or "."
            condition = condition_of(parts[index - 2], parts[index - 1]) if index >= 2 else run
            return condition, run, part
    return None


def read_scalars(sweep_dir: str | Path) -> pd.DataFrame:
    """Every per-epoch scalar of sessions II and III as a long table.

    Columns: condition, run, session, epoch (0-based within the session), tag, value. A value written twice
    for the same epoch (a resumed run) keeps the later one.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist; pass the --out of the sweep")
    raw = SummaryReader(str(sweep_dir), extra_columns={"dir_name", "wall_time"}, event_types={"scalars"}).scalars
    columns = ["condition", "run", "session", "epoch", "tag", "value"]
    if raw.empty:
        return pd.DataFrame(columns=columns)
    located = raw["dir_name"].map(_locate)
    raw = raw[located.notna()].copy()
    if raw.empty:
        return pd.DataFrame(columns=columns)
    raw[["condition", "run", "session"]] = pd.DataFrame(located[located.notna()].tolist(), index=raw.index)
    raw = raw.sort_values("wall_time").drop_duplicates(["dir_name", "tag", "step"], keep="last")
    epochs = raw[raw["tag"] == "epoch"][["dir_name", "step", "value"]].rename(columns={"value": "epoch"})
    metrics = raw[raw["tag"] != "epoch"]
    with_epoch = metrics.merge(epochs, on=["dir_name", "step"], how="left")
    # without Lightning's epoch scalar, a per-epoch tag's k-th step is epoch k
    by_rank = with_epoch.groupby(["dir_name", "tag"])["step"].rank(method="dense") - 1
    with_epoch["epoch"] = with_epoch["epoch"].fillna(by_rank).astype(int)
    table = with_epoch.sort_values("wall_time").drop_duplicates(["run", "session", "tag", "epoch"], keep="last")
    return table[columns].sort_values(["condition", "run", "session", "tag", "epoch"]).reset_index(drop=True)


def session_offsets(scalars: pd.DataFrame) -> pd.DataFrame:
    """Where each session starts on a condition's shared epoch axis (III starts after the longest II)."""
    lengths = scalars.groupby(["condition", "session"])["epoch"].max().add(1).unstack(fill_value=0)
    offsets = pd.DataFrame(0, index=lengths.index, columns=list(SESSIONS))
    if JOINT in lengths:
        offsets[FROZEN] = lengths[JOINT]
    return offsets.stack().rename("offset").reset_index().rename(columns={"level_1": "session"})


def learning_curves(scalars: pd.DataFrame, tags: Sequence[str] = ("val/acc", "val/loss")) -> pd.DataFrame:
    """Mean, sd and n over a condition's runs at each epoch of the shared II-then-III axis, per tag.

    Columns: condition, session, tag, x (epoch on the shared axis), mean, sd, n.
    """
    chosen = scalars[scalars["tag"].isin(tags)]
    if chosen.empty:
        raise ValueError(f"no scalars named {list(tags)}; the sweep logged {sorted(scalars['tag'].unique())}")
    chosen = chosen.merge(session_offsets(scalars), on=["condition", "session"])
    chosen = chosen.assign(x=chosen["epoch"] + chosen["offset"])
    grouped = chosen.groupby(["condition", "session", "tag", "x"])["value"]
    return grouped.agg(mean="mean", sd="std", n="count").reset_index()


def epochs_to_fraction(
    scalars: pd.DataFrame, fractions: Sequence[float] = (0.95, 0.99), tag: str = "val/acc"
) -> pd.DataFrame:
    """Per run and session: the final ``tag`` value and the epochs (1-based count) until it first reaches
    each fraction of that final value. Columns: condition, run, session, final, epochs_to_95, ...
    """
    rows = []
    for (condition, run, session), group in scalars[scalars["tag"] == tag].groupby(["condition", "run", "session"]):
        values = group.sort_values("epoch")["value"].to_numpy()
        row = {"condition": condition, "run": run, "session": session, "final": values[-1]}
        for fraction in fractions:
            row[f"epochs_to_{round(fraction * 100)}"] = int(np.argmax(values >= fraction * values[-1])) + 1
        rows.append(row)
    if not rows:
        logged = sorted(scalars["tag"].unique())
        raise ValueError(f"no scalar {tag!r} in sessions {SESSIONS}; the sweep logged {logged}")
    return pd.DataFrame(rows)


def summarise_speed(speed: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over runs of :func:`epochs_to_fraction` per condition and session."""
    measures = [column for column in speed.columns if column.startswith("epochs_to_")]
    table = speed.groupby(["condition", "session"])[measures].agg(["mean", "std", "count"])
    table.columns = [f"{measure}_{stat.replace('std', 'sd').replace('count', 'n')}" for measure, stat in table.columns]
    table = table.reset_index()
    return table.sort_values(["condition", "session"], key=_session_order).reset_index(drop=True)


def _session_order(column: pd.Series) -> pd.Series:
    """Sort key putting sessions in protocol order (II before III) and leaving other columns as they are."""
    return column.map(SESSIONS.index) if column.name == "session" else column
