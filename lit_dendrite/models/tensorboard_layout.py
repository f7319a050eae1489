"""TensorBoard's Custom Scalars tab for training runs: validation accuracy and loss first, one line per run and
session (II and III write the same tags into their own session directories), then training, then session I's fit in
its own group, instead of the Scalars tab's alphabetical cards (``epoch`` and ``hp/*`` before ``val/*``)."""

from __future__ import annotations

from lit_dendrite.models.console import SESSION_TITLES
from lit_dendrite.runs import PRETRAIN

LAYOUT: dict[str, dict[str, list]] = {
    "Validation (sessions II and III, one line per session)": {
        "val/acc: validation accuracy": ["Multiline", [r"^val/acc$"]],
        "val/loss: validation loss (early stopping and the best checkpoint use it)": ["Multiline", [r"^val/loss$"]],
    },
    "Training (sessions II and III)": {
        "train/acc: training accuracy (with dropout)": ["Multiline", [r"^train/acc$"]],
        "train/loss_epoch: training loss, epoch mean": ["Multiline", [r"^train/loss_epoch$"]],
    },
    f"{SESSION_TITLES[PRETRAIN]}: fit to its target function": {
        "pretrain/explained_variance": ["Multiline", [r"^pretrain/explained_variance$"]],
        "pretrain/loss: mean squared error": ["Multiline", [r"^pretrain/loss$"]],
    },
}
"""Category -> chart title -> ``["Multiline", [tag regexes]]``, tensorboard's custom-scalars layout format."""
