"""Session I: pretrain the net's shared learned module by MSE to its neuron's target (the inner net's: a random
smooth function, a fresh one per seed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_dendrite.data.shuffle import EpochShuffle
from lit_dendrite.nn.inner import GRID_POINTS, smooth_target

# Every arity's epoch holds at least the 2-argument grid's 101^2 points (a smaller grid is repeated), so one epoch
# is the same number of Adam steps for every arity: 500 epochs fit a 1-argument inner net as long as a 2-argument
# one (one step per epoch on the 101 points of the 1-D grid left it at explained variance 0.54-0.92).
EPOCH_POINTS = GRID_POINTS**2


class InnerPretrain(L.LightningModule):
    """Fits ``inner`` to ``target_of(inner, seed)`` (default: :func:`smooth_target`, the inner net's random smooth
    function) with Adam; logs ``pretrain/loss`` and ``pretrain/explained_variance`` (1 - MSE / Var(target), on all
    target points, after each epoch).

    The state with the best explained variance so far is kept (in checkpoints too, so a resumed fit keeps it);
    :meth:`restore_best` puts it back into ``inner``. With ``target`` set, the fit stops at the end of the first
    epoch that reaches it.
    """

    def __init__(
        self,
        inner: nn.Module,
        seed: int = 0,
        lr: float = 1e-3,
        batch_size: int = 256,
        target: float | None = None,
        target_of: Callable[[nn.Module, int], tuple[torch.Tensor, torch.Tensor]] = smooth_target,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.lr = lr
        self.batch_size = batch_size
        self.target = target
        self.inputs, self.targets = target_of(inner, seed)
        self.best: dict[str, Any] = {"explained_variance": -float("inf"), "epoch": None, "state": None}

    def train_dataloader(self) -> DataLoader:
        repeats = -(-EPOCH_POINTS // len(self.targets))
        dataset = TensorDataset(*(t.repeat(repeats, *[1] * (t.dim() - 1)) for t in (self.inputs, self.targets)))
        return DataLoader(dataset, batch_size=self.batch_size, sampler=EpochShuffle(len(dataset)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = F.mse_loss(self.inner(inputs), targets)
        self.log("pretrain/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        return loss

    def on_train_epoch_end(self) -> None:
        explained = self.explained_variance()
        self.log("pretrain/explained_variance", explained)
        if explained > self.best["explained_variance"]:
            state = {k: v.detach().cpu().clone() for k, v in self.inner.state_dict().items()}
            self.best = {"explained_variance": explained, "epoch": self.current_epoch, "state": state}
        if self.target is not None and explained >= self.target:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pretrain_best"] = self.best

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best = checkpoint.get("pretrain_best", self.best)

    def restore_best(self) -> None:
        """Load the best state seen into ``inner`` (no-op before the first epoch)."""
        if self.best["state"] is not None:
            self.inner.load_state_dict(self.best["state"])

    @torch.no_grad()
    def explained_variance(self) -> float:
        """Fraction of the target's variance the module explains on all target points."""
        predictions = self.inner(self.inputs.to(self.device)).cpu()
        return float(1 - F.mse_loss(predictions, self.targets) / self.targets.var(unbiased=False))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.inner.parameters(), lr=self.lr)
