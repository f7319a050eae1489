"""Why a learned-neuron ResNet stalls: what its session-I function, its blocks' activations and its gradients look
like where session II starts, and its loss over the first epochs (issue 28).

:func:`diagnose_run` trains sessions I and II of one configuration through the library's own training command
(:func:`lit_dendrite.cli.train`) with :class:`ResNetProbe` attached, so the net measured is exactly the one session II
starts from; the probe measures a copy of it on session II's first training batch (train mode, as training sees it),
so training itself is unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

SHAPE_LIMIT = 1.5
"""Half-width of the input range whose sign changes are counted: LayerNorm's outputs lie mostly in [-1.5, 1.5]."""
SHAPE_POINTS = 301
SHAPE_SAMPLES = 20_000


@torch.no_grad()
def inner_shape(inner: nn.Module, arity: int, seed: int = 0) -> dict[str, float]:
    """The shared function over the inputs LayerNorm gives it (independent standard normals, an approximation: a
    unit's inputs are correlated): its output's mean and standard deviation there, its sign changes along the
    diagonal (all inputs equal) in [-SHAPE_LIMIT, SHAPE_LIMIT], the norm of its gradient at 0, the root mean square
    of its gradient's norm there, and ``backward_gain``: that RMS slope over the output's standard deviation, by which
    a layer normalised after it (BatchNorm, in the ResNet) multiplies gradients relative to activations (ReLU's:
    0.5 ** 0.5 / 0.58 = 1.2)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(SHAPE_SAMPLES, arity, generator=generator)
    samples = inner(inputs)
    line = torch.linspace(-SHAPE_LIMIT, SHAPE_LIMIT, SHAPE_POINTS)
    values = inner(line[:, None].expand(-1, arity).contiguous())
    signs = torch.sign(values[values != 0])
    with torch.enable_grad():
        origin = torch.zeros(1, arity, requires_grad=True)
        (slope,) = torch.autograd.grad(inner(origin).sum(), origin)
        points = inputs.clone().requires_grad_(True)
        (slopes,) = torch.autograd.grad(inner(points).sum(), points)
    rms_slope = float(slopes.norm(dim=-1).square().mean().sqrt())
    return {
        "out_mean": float(samples.mean()),
        "out_std": float(samples.std()),
        "sign_changes": int((signs[1:] != signs[:-1]).sum()),
        "slope_at_0": float(slope.norm()),
        "rms_slope": rms_slope,
        "backward_gain": rms_slope / float(samples.std()),
    }


def block_statistics(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[dict[str, float]]:
    """Per stage of a :class:`~lit_dendrite.nn.resnet.DendriticResNet` (the stem, then each block): its output's
    mean and standard deviation, the standard deviation of the residual (shortcut: ``projection`` or identity) and of
    the branch (its ``branch_end``'s output: the second BatchNorm's, or in the pre-activation layout the second conv's)
    added to it, and the norm of the loss gradient at its output, on one
    batch in train mode (which updates the BatchNorms' running statistics: measure a copy of a net in training)."""
    stages = [("stem", net.stem), *((f"block {i + 1}", block) for i, block in enumerate(net.stages))]
    found: dict[str, dict[str, Any]] = {name: {} for name, _ in stages}
    handles = []

    def keep(name: str, key: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            found[name][key] = output
            if key == "out":
                output.retain_grad()

        return hook

    for name, module in stages:
        handles.append(module.register_forward_hook(keep(name, "out")))
        if name != "stem":
            handles.append(module.shortcut.register_forward_hook(keep(name, "residual")))
            handles.append(module.branch_end.register_forward_hook(keep(name, "branch")))
    try:
        net.train()
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), labels).backward()
    finally:
        net.zero_grad(set_to_none=True)
        for handle in handles:
            handle.remove()
    rows = []
    for name, _ in stages:
        tensors = found[name]
        std = {key: float(value.detach().std()) for key, value in tensors.items()}
        row = {"stage": name, "out_mean": float(tensors["out"].detach().mean()), "out_std": std["out"]}
        if "residual" in tensors:
            projection = not isinstance(dict(stages)[name].shortcut, nn.Identity)
            row |= {"residual_std": std["residual"], "branch_std": std["branch"], "projection": projection}
        grad = tensors["out"].grad
        rows.append(row | {"grad_norm": math.nan if grad is None else float(grad.norm())})
    return rows


def growth_per_block(rows: Sequence[dict[str, float]]) -> float:
    """The geometric mean factor by which the gradient norm grows per block from the last block back to the stem."""
    first, last = rows[0]["grad_norm"], rows[-1]["grad_norm"]
    return (first / last) ** (1 / (len(rows) - 1)) if last > 0 else math.inf


class ResNetProbe(L.Callback):
    """Measures session II's starting net (:func:`inner_shape`, :func:`block_statistics`) on its first training
    batch, then records each epoch's mean training loss and validation accuracy; with ``stop_after_start`` session
    II ends after that batch."""

    def __init__(self, stop_after_start: bool = False) -> None:
        self.stop_after_start = stop_after_start
        self.start: dict[str, Any] | None = None
        self.losses: list[float] = []
        self.val_acc: list[float] = []
        self._sum, self._count = 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.start is not None or batch_idx != 0 or trainer.current_epoch != 0 or not hasattr(module, "net"):
            return  # session I (no outer net) or measured already
        net = copy.deepcopy(module.net)
        images, labels = batch
        self.start = {"blocks": block_statistics(net, images, labels)}
        if getattr(net, "inner", None) is not None:
            self.start["inner"] = inner_shape(net.inner, net.neuron_spec.arity)
        self.start["growth_per_block"] = growth_per_block(self.start["blocks"])
        trainer.should_stop = self.stop_after_start

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._sum, self._count = 0.0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._sum += float(outputs["loss"].detach())
        self._count += 1

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not hasattr(module, "net"):
            return
        self.losses.append(self._sum / max(self._count, 1))
        self.val_acc.append(float(trainer.callback_metrics.get("val/acc", math.nan)))


def diagnose_run(
    config: Path, seed: int, run_dir: Path, pretrain_epochs: int, epochs: int, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Sessions I and II (``epochs`` epochs, no early stopping, no stall rule; 0: its first batch only) of
    ``config`` with ``seed`` into ``run_dir``, measured by :class:`ResNetProbe`; ``overrides`` are further
    training arguments (``--key value``)."""
    from lit_dendrite.cli import train  # the training command: imported only where a run is trained

    probe = ResNetProbe(stop_after_start=epochs == 0)
    # 0 epochs: the measurement at session II's start only (then one validation and test batch; session I has none,
    # so limiting them leaves it whole, as a limit on training batches would not)
    limits = [f"--trainer.limit_{stage}_batches" for stage in ("val", "test")] if epochs == 0 else []
    args = [
        "--config", str(config), "--seed_everything", str(seed), "--run_dir", str(run_dir),
        "--protocol.pretrain_epochs", str(pretrain_epochs), "--protocol.sessions", "[I_pretrain,II_joint]",
        "--protocol.joint_epochs", str(max(epochs, 1)), "--protocol.stall_epochs", "0",
        *(item for limit in limits for item in (limit, "1")),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.callbacks", "[]", *overrides,
    ]  # fmt: skip
    result = train(args, extra_callbacks=[probe])
    if probe.start is None:
        raise RuntimeError(f"{run_dir}: session II did not start a training batch (was it finished before?)")
    return {
        "seed": seed,
        "overrides": list(overrides),
        "pretrain_epochs": pretrain_epochs,
        "start": probe.start,
        "train_loss": probe.losses if epochs else [],
        "val_acc": probe.val_acc if epochs else [],
        "test_acc": result.get("test_acc") if epochs else None,
    }
