"""What a training run prints: one line as each session starts and ends, progress as a bar on a terminal or as a
line every half minute into a log file, and Lightning's noise kept off the console (its tips, repeated device lines,
a deprecation warning from its own code, the progress bar's ``v_num``)."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ProgressBar, TQDMProgressBar

from lit_dendrite.runs import FROZEN, JOINT, PRETRAIN

SESSION_TITLES = {
    PRETRAIN: "session I (pretrain the inner net)",
    JOINT: "session II (joint)",
    FROZEN: "session III (frozen inner net)",
}
"""Each session's name as a person reads it, on the console and in TensorBoard's layout."""

PREFIX = "[lit_dendrite]"
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
"""The logger of Lightning's ``rank_zero_info`` lines (device lines, tips, checkpoint restores)."""
LIGHTNING_TIP = "💡 Tip:"
PROGRESS_LINE_EVERY_S = 30.0
"""How often a run that writes to a file (not a terminal) prints a progress line."""


@rank_zero_only
def say(text: str) -> None:
    """Print one line of the run's own console output (on the first process only)."""
    print(f"{PREFIX} {text}", flush=True)


def seconds_text(seconds: float) -> str:
    """A wall time as a person reads it: ``8.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def epochs_budget(max_epochs: int | None, patience: int, fixed: int | None) -> str:
    """Session II's or III's budget: a fixed number of epochs, or early stopping within ``trainer.max_epochs``."""
    if fixed is not None:
        return f"{fixed} epochs (fixed schedule, no early stopping)"
    limit = "no epoch limit" if max_epochs is None or max_epochs < 0 else f"up to {max_epochs} epochs"
    return f"{limit}, early stopping after {patience} epochs without a better val/loss"


class LightningNoiseFilter(logging.Filter):
    """Drops Lightning's tips (advertisements for its cloud services) and any line it already printed in this run
    (every session's Trainer repeats "GPU available ...")."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(LIGHTNING_TIP) or message in self.seen:
            return False
        self.seen.add(message)
        return True


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """While a run trains: Lightning's tips and repeated lines filtered out, and the FutureWarning that Lightning's
    own ``utilities/_pytree.py`` triggers (torch deprecated ``LeafSpec``; the call is Lightning's, not ours)
    ignored, by message and module, so that every other warning still shows."""
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    noise = LightningNoiseFilter()
    logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
                module=r"lightning\.pytorch\.utilities\._pytree",
            )
            yield
    finally:
        logger.removeFilter(noise)


class SessionProgressBar(TQDMProgressBar):
    """Lightning's progress bar without ``v_num``, the logger version, which is the session directory's name cut to
    4 letters (``v_num=oint``); the session's start line names it."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class ProgressLines(Callback):
    """Progress as lines for a log file, where a progress bar's redraws pile up: after the session's first epoch (in
    this process), then after the first epoch that ends :data:`PROGRESS_LINE_EVERY_S` after the last line, with the
    epoch-level metrics."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.last = -float("inf")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Report the epoch just finished (its validation and epoch-end metrics are all logged by now)."""
        logged = trainer.callback_metrics  # empty in the first epoch, also of a resumed session
        if not logged or time.monotonic() - self.last < PROGRESS_LINE_EVERY_S:
            return
        self.last = time.monotonic()
        # a metric logged per step and per epoch comes as key, key_step and key_epoch: the epoch mean is shown
        metrics = sorted(
            (not key.startswith("val/"), key, float(value))
            for key, value in logged.items()
            if not key.endswith("_step") and f"{key}_epoch" not in logged and value.numel() == 1
        )
        shown = ", ".join(f"{key} {value:.4g}" for _, key, value in metrics)
        limit = "" if trainer.max_epochs is None or trainer.max_epochs < 0 else f" of {trainer.max_epochs}"
        say(f"{self.title}: epoch {trainer.current_epoch}{limit} done{': ' if shown else ''}{shown}")


def progress_callbacks(enable_progress_bar: bool | None, callbacks: list[Callback], title: str) -> list[Callback]:
    """The session's progress display added to ``callbacks`` (unless one of them is a progress bar): Lightning's bar
    without ``v_num`` where ``trainer.enable_progress_bar`` is true, or unset and stdout is a terminal; progress lines
    where it is unset and stdout is a file; nothing where it is false."""
    if enable_progress_bar is False or any(isinstance(c, ProgressBar) for c in callbacks):
        return callbacks
    if enable_progress_bar or sys.stdout.isatty():
        return [*callbacks, SessionProgressBar()]
    return [*callbacks, ProgressLines(title)]
