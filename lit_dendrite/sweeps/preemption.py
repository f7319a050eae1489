"""Keeping Lightning out of submitit's way, so that submitit alone owns preemption and requeueing.

submitit installs its checkpoint-and-requeue handler (USR2, or TERM with ``SUBMITIT_PREEMPT_SIGNAL=TERM``) when
the job starts; the Trainer runs with ``SLURMEnvironment(auto_requeue=False)`` (see ``lit_dendrite.cli``) and
with :class:`RestoreSigtermHandler`, which every sweep job passes to ``train``.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class RestoreSigtermHandler(Callback):
    """Puts back the SIGTERM handler that was installed before ``Trainer.fit/test`` (submitit's).

    Lightning 2.6 always installs its own SIGTERM handler, which runs a ``dist.broadcast`` inside the signal
    handler; under DDP one rank can block there while the other sits in a gradient all-reduce, so the job
    hangs until its time limit. Lightning installs its handlers after ``setup`` and before the loops start,
    and restores the originals itself at teardown, so re-installing the original at the start of each loop
    removes the deadlock and leaves submitit's checkpoint-and-requeue path intact.
    """

    def __init__(self) -> None:
        self._original: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Remember the SIGTERM handler in place before Lightning replaces it."""
        if threading.current_thread() is threading.main_thread():
            self._original = signal.getsignal(signal.SIGTERM)

    def _restore(self) -> None:
        if self._original is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._original)

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Undo Lightning's SIGTERM handler before the sanity-check validation."""
        self._restore()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Undo Lightning's SIGTERM handler before training starts."""
        self._restore()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Undo Lightning's SIGTERM handler before testing starts."""
        self._restore()
