"""A Trainer callback for the cluster tests: every training epoch lasts at least ``seconds``, so that a run
is long enough for a requeue or a time limit to land mid-training on a machine of any speed."""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer


class EpochPacer(Callback):
    """Sleeps at the end of each training epoch until it has lasted ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note when the epoch started."""
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Pad the epoch to ``seconds``."""
        time.sleep(max(0.0, self.seconds - (time.monotonic() - self._start)))
