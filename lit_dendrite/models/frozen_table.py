"""Session III's fast path: the frozen inner net evaluated through per-layer lookup tables while training."""

from __future__ import annotations

import itertools

import lightning as L

from lit_dendrite.nn.tabulated import tabulate_inner, tabulation_report, use_exact_inner


class FrozenInnerTables(L.Callback):
    """Re-tabulates the frozen inner net at the start of every training epoch from a few validation batches
    (the range of its inputs drifts as the outer net trains), logs the tabulation error and the share of
    inputs that fell back to the exact inner net, and tests with the exact inner net.

    Inputs outside a table's box are always computed exactly, so the table only approximates inside it.
    """

    def __init__(self, calibration_batches: int = 4) -> None:
        if calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {calibration_batches}")
        self.calibration_batches = calibration_batches

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        loader = trainer.datamodule.val_dataloader()
        batches = [x.to(module.device) for x, _ in itertools.islice(loader, self.calibration_batches)]
        use_exact_inner(module.net)
        reports = tabulate_inner(module.net, calibration=batches)
        errors = {
            "table/max_abs_error_box": max(float(r["max_abs_error_box"]) for r in reports.values()),
            "table/max_abs_error_inputs": max(float(r["max_abs_error_inputs"]) for r in reports.values()),
        }
        if trainer.logger is not None:
            trainer.logger.log_metrics(errors, step=trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        fractions = [float(r["exact_fraction"]) for r in tabulation_report(module.net).values()]
        if fractions and trainer.logger is not None:
            trainer.logger.log_metrics({"table/exact_fraction": max(fractions)}, step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        use_exact_inner(module.net)

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        use_exact_inner(module.net)
