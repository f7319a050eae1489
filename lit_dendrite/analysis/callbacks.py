"""Lightning callback that logs the inner-net surface to TensorBoard every epoch, to watch the XOR form."""

from __future__ import annotations

import lightning.pytorch as pl

from lit_dendrite.analysis.plots import figure_to_rgb, surface_figure
from lit_dendrite.analysis.surfaces import Grid, evaluate_surface, surface_module


class SurfaceImageCallback(pl.Callback):
    """After every ``every_n_epochs`` training epochs, log the two-argument inner net on ``grid`` as an image.

    Does nothing for nets without a two-argument inner net or loggers without ``add_image`` (TensorBoard has it).
    """

    def __init__(self, grid: Grid | None = None, every_n_epochs: int = 1, tag: str = "inner/surface") -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.grid = grid or Grid()
        self.every_n_epochs = every_n_epochs
        self.tag = tag

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.current_epoch % self.every_n_epochs:
            return
        inner = surface_module(pl_module)
        if inner is None:
            return
        experiments = [logger.experiment for logger in trainer.loggers if hasattr(logger.experiment, "add_image")]
        if not experiments:
            return
        was_training = inner.training
        inner.eval()
        surface = evaluate_surface(inner, self.grid)
        inner.train(was_training)
        image = figure_to_rgb(surface_figure(surface, title=f"inner net, epoch {trainer.current_epoch}"))
        for experiment in experiments:
            experiment.add_image(self.tag, image, global_step=trainer.global_step, dataformats="HWC")
