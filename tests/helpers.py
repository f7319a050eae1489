"""Shared helpers for tests that train real (tiny) runs on the embedded digits data."""

import importlib.util
import types
from pathlib import Path

from lit_dendrite.cli import train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "experiment"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def quick_args(config: str, run_dir: Path, epochs: int = 3, pretrain_epochs: int = 2, *extra: str) -> list[str]:
    """Arguments for a short run of ``configs/experiment/<config>.yaml`` into ``run_dir``."""
    return [
        "--config", str(CONFIGS / f"{config}.yaml"),
        "--run_dir", str(run_dir),
        "--trainer.max_epochs", str(epochs),
        "--protocol.pretrain_epochs", str(pretrain_epochs),
        *QUIET,
        *extra,
    ]  # fmt: skip


def quick_train(config: str, run_dir: Path, epochs: int = 3, pretrain_epochs: int = 2, *extra: str, **kwargs):
    """Train a short run and return its result dict."""
    return train(quick_args(config, run_dir, epochs, pretrain_epochs, *extra), **kwargs)


def digits_test_set():
    """The digits test set as the nets take it: images (N x C x H x W, floats in [0, 1]) and labels, as tensors."""
    import torch

    from lit_dendrite.data import load_arrays

    images, labels = load_arrays("digits", "unused", train=False)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(labels)


def assert_reload_gives_the_tested_accuracy(run_dir: Path, result: dict) -> None:
    """The net rebuilt from the run directory (``load_net``) predicts the test set with the accuracy the run tested."""
    import torch

    from lit_dendrite.models import load_net

    x, labels = digits_test_set()
    with torch.no_grad():
        accuracy = (load_net(run_dir)(x).argmax(1) == labels).float().mean().item()
    assert abs(accuracy - result["test_acc"]) <= 1e-6, (accuracy, result["test_acc"])


def load_launcher() -> types.ModuleType:
    """``launch/sweep.py`` as a module (its ``main`` takes the command's arguments)."""
    spec = importlib.util.spec_from_file_location("sweep_launcher", REPO / "launch" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
