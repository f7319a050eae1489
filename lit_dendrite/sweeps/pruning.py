"""The Lightning callback that feeds an Optuna trial's pruner, epoch by epoch (imports Lightning: used in jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer


class TrialPruning(Callback):
    """Reports ``monitor`` after each validation of ``session`` to ``trial`` (step: the epoch) and raises
    :class:`optuna.TrialPruned` when the study's pruner says the trial cannot become one of the best."""

    def __init__(self, trial: Any, session: str, monitor: str = "val/loss") -> None:
        self.trial = trial
        self.session = session
        self.monitor = monitor

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Report this epoch's validation metric of the monitored session; stop the trial when pruned."""
        if trainer.sanity_checking or Path(trainer.default_root_dir).name != self.session:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)  # a resumed trial's repeated epoch is ignored by Optuna
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} of {self.session}: {self.monitor} {value:.4g}")
