"""Session I: pretrain the inner net by MSE to a random smooth function (a fresh one per seed)."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader, TensorDataset

from lit_dendrite.data.shuffle import EpochShuffle
from lit_dendrite.nn.inner import InnerNet

GRID_POINTS = 101
GRID_LIMIT = 5.0
SMOOTHING_SIGMA = 1 / 3
# Every arity's epoch holds at least the 2-argument grid's 101^2 points (a smaller grid is repeated), so one epoch
# is the same number of Adam steps for every arity: 500 epochs fit a 1-argument inner net as long as a 2-argument
# one (one step per epoch on the 101 points of the 1-D grid left it at explained variance 0.54-0.92).
EPOCH_POINTS = GRID_POINTS**2


def smooth_random_function(arity: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (points, arity) on a 101^arity grid over [-5,5] and uniform(-1,1) noise blurred by a normalised
    Gaussian of sigma 1/3 input units (the paper's session-I target)."""
    if arity not in (1, 2, 3):
        raise ValueError(f"pretraining targets exist for arity 1, 2 or 3, got {arity}")
    axis = np.linspace(-GRID_LIMIT, GRID_LIMIT, GRID_POINTS)
    spacing = axis[1] - axis[0]
    noise = np.random.default_rng(seed).uniform(-1, 1, size=(GRID_POINTS,) * arity)
    target = gaussian_filter(noise, sigma=SMOOTHING_SIGMA / spacing, mode="reflect")
    grids = np.meshgrid(*([axis] * arity), indexing="ij")
    inputs = np.stack([g.ravel() for g in grids], axis=-1)
    return torch.tensor(inputs, dtype=torch.float32), torch.tensor(target.ravel(), dtype=torch.float32)


class InnerPretrain(L.LightningModule):
    """Fits ``inner`` to ``smooth_random_function(inner.arity, seed)`` with Adam; logs ``pretrain/loss``
    and ``pretrain/explained_variance`` (1 - MSE / Var(target), on the whole grid, after each epoch).

    The state with the best explained variance so far is kept (in checkpoints too, so a resumed fit keeps it);
    :meth:`restore_best` puts it back into ``inner``. With ``target`` set, the fit stops at the end of the first
    epoch that reaches it.
    """

    def __init__(
        self, inner: InnerNet, seed: int = 0, lr: float = 1e-3, batch_size: int = 256, target: float | None = None
    ) -> None:
        super().__init__()
        self.inner = inner
        self.lr = lr
        self.batch_size = batch_size
        self.target = target
        self.inputs, self.targets = smooth_random_function(inner.arity, seed)
        self.best: dict[str, Any] = {"explained_variance": -float("inf"), "epoch": None, "state": None}

    def train_dataloader(self) -> DataLoader:
        repeats = -(-EPOCH_POINTS // len(self.targets))
        dataset = TensorDataset(self.inputs.repeat(repeats, 1), self.targets.repeat(repeats))
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
        """Fraction of the target's variance the inner net explains on the whole grid."""
        predictions = self.inner(self.inputs.to(self.device)).cpu()
        return float(1 - F.mse_loss(predictions, self.targets) / self.targets.var(unbiased=False))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.inner.parameters(), lr=self.lr)
