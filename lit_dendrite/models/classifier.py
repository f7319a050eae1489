"""The classification LightningModule used for sessions II (joint) and III (frozen inner net)."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from lit_dendrite.errors import ConfigError


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the run stops with status ``diverged`` and is not retried."""


class Classifier(L.LightningModule):
    """Cross-entropy training of an outer network (passed in as ``net``) with Adam.

    ``warmup_epochs`` (None: none): the learning rate rises linearly from ``lr / steps`` to ``lr`` over the first
    ``warmup_epochs`` epochs' optimizer steps (``steps`` of them) of each training session (II and III, which both
    start from a freshly initialised outer net), then stays at ``lr``; it follows the global step, so a resumed run
    continues it exactly. Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    """

    def __init__(self, net: nn.Module, lr: float = 1e-3, warmup_epochs: float | None = None) -> None:
        super().__init__()
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"model.lr must be a finite number > 0 (the paper's is 1e-3), got {lr}")
        if warmup_epochs is not None and not (math.isfinite(warmup_epochs) and warmup_epochs > 0):
            raise ConfigError(
                f"model.warmup_epochs must be a finite number > 0 or null (no warm-up), got {warmup_epochs}"
            )
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.lr = lr
        self.warmup_epochs = warmup_epochs
        num_classes = getattr(net, "num_classes", None)
        if num_classes is None:
            raise ConfigError(f"net {type(net).__name__} must expose num_classes")
        self.accuracy = nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro") for stage in ("train", "val")}
        )

    @property
    def inner(self) -> nn.Module | None:
        """The shared inner net, or None for fixed neurons."""
        return getattr(self.net, "inner", None)

    def freeze_inner(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a trained inner net and freeze it (session III)."""
        if self.inner is None:
            raise ConfigError("this network has no inner net to freeze")
        self.inner.load_state_dict(state_dict)
        self.inner.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(labels))
        if stage == "test":
            # Several test dataloaders (one per corruption and severity) share this hook: a batch-size-weighted
            # mean of per-batch accuracies is exact per dataloader, where one metric object would mix them.
            accuracy = multiclass_accuracy(logits, labels, self.net.num_classes, average="micro")
            self.log("test/acc", accuracy, on_epoch=True, batch_size=len(labels), sync_dist=True)
        else:
            self.accuracy[f"{stage}_acc"](logits, labels)
            self.log(f"{stage}/acc", self.accuracy[f"{stage}_acc"], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def warmup_factor(self, step: int) -> float:
        """The learning rate's factor at optimizer step ``step`` (0-based) of this session's training."""
        if self.warmup_epochs is None:
            return 1.0
        steps_per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        return min(1.0, (step + 1) / (self.warmup_epochs * steps_per_epoch))

    def on_train_batch_start(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        if self.warmup_epochs is not None:
            factor = self.warmup_factor(self.trainer.global_step)
            for optimizer in self.trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr * factor

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        diverged = not bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            diverged = self.trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if diverged:
            raise Diverged(f"non-finite training loss at epoch {self.current_epoch}, step {self.global_step}")
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)
