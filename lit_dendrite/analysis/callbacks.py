"""Lightning callback that logs the inner-net surface to TensorBoard every epoch, to watch the XOR form."""

from __future__ import annotations

import lightning.pytorch as pl

from lit_dendrite.analysis.plots import figure_to_rgb, surface_figure, surfaces_figure
from lit_dendrite.analysis.surfaces import Grid, evaluate_surface, surface_inner_nets


class SurfaceImageCallback(pl.Callback):
    """After every ``every_n_epochs`` training epochs, log the two-argument inner net on ``grid`` as an image (a net of
    several cell types: one panel per type).

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
        inner_nets = surface_inner_nets(pl_module)
        if not inner_nets:
            return
        experiments = [logger.experiment for logger in trainer.loggers if hasattr(logger.experiment, "add_image")]
        if not experiments:
            return
        title = f"epoch {trainer.current_epoch}"
        surfaces = []
        for name, (inner, _) in inner_nets.items():
            was_training = inner.training
            inner.eval()
            surfaces.append((f"{name.removeprefix('net.')}, {title}", evaluate_surface(inner, self.grid)))
            inner.train(was_training)
        if len(surfaces) == 1:
            figure = surface_figure(surfaces[0][1], title=f"inner net, {title}")
        else:  # one panel per cell type
            figure = surfaces_figure(surfaces)
        image = figure_to_rgb(figure)
        for experiment in experiments:
            experiment.add_image(self.tag, image, global_step=trainer.global_step, dataformats="HWC")
