"""Shared helpers for tests that train real (tiny) runs on the embedded digits data."""

from pathlib import Path

from lit_dendrite.cli import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "experiment"
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
