"""Lightning callback that logs the inner-net surface (or a one-argument activation's curve) to TensorBoard every
epoch, to watch the XOR form (or the activation) develop."""

from __future__ import annotations

import lightning.pytorch as pl

from lit_dendrite.analysis.activations import CurveAnalysis, evaluate_curve
from lit_dendrite.analysis.plots import activation_figure, figure_to_rgb, surface_figure, surfaces_figure
from lit_dendrite.analysis.surfaces import Grid, evaluate_surface, surface_inner_nets
from lit_dendrite.nn.neurons import analysed_module

CURVE_TAG = "inner/curve"
"""The TensorBoard tag of a learned one-argument activation's curve."""


class SurfaceImageCallback(pl.Callback):
    """After every ``every_n_epochs`` training epochs, log the two-argument inner net on ``grid`` as an image (a net of
    several cell types: one panel per type) (``tag``), or for a learned one-argument activation (``1arg``, ``pau``)
    its curve over the grid's range (:data:`CURVE_TAG`: not an argument, so that configurations recorded before it
    existed stay the same).

    Does nothing for other nets or loggers without ``add_image`` (TensorBoard has it).
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
        experiments = [logger.experiment for logger in trainer.loggers if hasattr(logger.experiment, "add_image")]
        if not experiments:
            return
        title = f"epoch {trainer.current_epoch}"
        inner_nets = surface_inner_nets(pl_module)
        if inner_nets:
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
            tag = self.tag
        elif analysed_module(pl_module, "curve") is not None:
            curve = CurveAnalysis(self.grid.axis, evaluate_curve(pl_module, self.grid.axis))
            tag, figure = CURVE_TAG, activation_figure({f"learned activation, {title}": [("activation", curve)]})
        else:
            return
        image = figure_to_rgb(figure)
        for experiment in experiments:
            experiment.add_image(tag, image, global_step=trainer.global_step, dataformats="HWC")
