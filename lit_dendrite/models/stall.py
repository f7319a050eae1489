"""The stall rule: a session whose training loss stays at chance for a set number of epochs ends the run as
``stalled``.

A classifier that predicts nothing has a cross-entropy of ln(classes) (2.303 for 10 classes). The dendritic ResNets
of docs/results.md that did not learn kept their training loss there for 20 epochs and more, spending their whole
budget (and the following sessions') at chance; a rerun with the same seed stalls again, so a stalled run is
finished, not failed, and a sweep does not resubmit it unless asked (``sweep.py submit --retry-stalled``).
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

STALL_EPOCHS = 10
"""The streak ``protocol.stall_epochs`` is tested with: the runs of docs/results.md that went on to learn left chance
within 9 epochs of session II; the one that never learned sat at chance for 21. The rule is off unless a config sets
it: in the digits demo a 1-arg MLP (6 steps an epoch) sat at chance for its first 10 epochs and then learned."""
STALL_MARGIN = 0.05
"""Default of ``protocol.stall_margin`` (where the rule is on), in nats either side of ln(classes): a net at
2.253 for 10 classes puts on average 1.05 times chance's probability on the right class (e^0.05), i.e. it has
learned close to nothing."""


class Stalled(RuntimeError):
    """A session's training loss stayed within the margin of chance for the set number of epochs; the run stops
    with status ``stalled``, keeping the sessions it finished."""


class StallStop(Callback):
    """Stops training once the epoch's mean training loss has been within ``margin`` of ``ln(num_classes)`` (either
    side: a net that starts above chance and comes down is learning) for ``epochs`` epochs in a row; ``streak``
    holds those epochs (1-based). Its state travels in checkpoints, so a resumed session keeps counting (and one
    that stalled before stops at once)."""

    def __init__(self, num_classes: int, epochs: int, margin: float) -> None:
        if num_classes < 2 or epochs < 1 or not (math.isfinite(margin) and margin > 0):
            raise ValueError(
                f"StallStop needs num_classes >= 2, epochs >= 1, margin > 0; got {num_classes}, {epochs}, {margin}"
            )
        self.chance = math.log(num_classes)
        self.epochs = epochs
        self.margin = margin
        self.streak: list[int] = []
        self._loss_sum = 0.0
        self._batches = 0

    @property
    def stalled(self) -> bool:
        return len(self.streak) >= self.epochs

    @property
    def reason(self) -> str:
        """Why the session stopped, for the run record."""
        first, last = self.streak[0], self.streak[-1]
        chance = f"ln {math.exp(self.chance):.0f} = {self.chance:.3f}"
        return (
            f"mean training loss stayed within {self.margin} of chance ({chance}) "
            f"for {len(self.streak)} epochs ({first}-{last}); set protocol.stall_epochs 0 to train such runs anyway"
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stalled:
            trainer.should_stop = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._batches = 0.0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum += float(loss.detach())
            self._batches += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        near_chance = self._batches > 0 and abs(self._loss_sum / self._batches - self.chance) <= self.margin
        # every rank decides alike: stalled only where all ranks' losses are at chance
        near_chance = trainer.strategy.reduce_boolean_decision(near_chance, all=True)
        self.streak = [*self.streak, trainer.current_epoch + 1] if near_chance else []
        if self.stalled:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, list[int]]:
        return {"streak": list(self.streak)}

    def load_state_dict(self, state_dict: dict[str, list[int]]) -> None:
        self.streak = list(state_dict.get("streak", []))
