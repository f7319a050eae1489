"""Tiny sweeps for the analysis tests: a hand-made one (seconds) and a real one trained by the pipeline.

Both follow the sweep layout ``<sweep>/<experiment>/<key=value,...>/<session>/`` with ``result.json`` per run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from lit_dendrite.nn import DendriticMLP, count_parameters

CONDITIONS = {"mlp_digits_2arg": "2arg", "mlp_digits_relu": "relu"}


def write_session_events(directory: Path, accuracies: list[float], steps_per_epoch: int = 6) -> None:
    """Per-epoch val/acc, val/loss and Lightning's epoch scalar at each epoch's last step, plus test/acc."""
    writer = SummaryWriter(str(directory))
    for epoch, accuracy in enumerate(accuracies):
        step = (epoch + 1) * steps_per_epoch - 1
        writer.add_scalar("val/acc", accuracy, step)
        writer.add_scalar("val/loss", 2.3 * (1 - accuracy), step)
        writer.add_scalar("epoch", epoch, step)
    writer.add_scalar("test/acc", accuracies[-1], len(accuracies) * steps_per_epoch)
    writer.close()


def make_fake_sweep(sweep_dir: Path, seeds: tuple[int, ...] = (1, 2, 3)) -> Path:
    """Untrained nets saved as the pipeline saves them, with result.json, event files and robustness.json."""
    for experiment, neuron in CONDITIONS.items():
        for seed in seeds:
            run_dir = sweep_dir / experiment / f"seed={seed}"
            sessions = ["II_joint", "III_frozen"] if neuron == "2arg" else ["II_joint"]
            torch.manual_seed(seed)
            init_args = {"widths": [16, 16], "neuron": neuron, "mean": [0.3053], "std": [0.3247]}
            net = DendriticMLP(**init_args)
            checkpoint = run_dir / sessions[-1] / "checkpoints" / "best.ckpt"
            checkpoint.parent.mkdir(parents=True)
            torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, checkpoint)
            bonus = 0.05 if neuron == "2arg" else 0.0
            for index, session in enumerate(sessions):
                curve = [min(1.0, 0.3 + 0.15 * epoch + bonus + 0.01 * seed) for epoch in range(4 + index)]
                write_session_events(run_dir / session, curve)
            test_acc = 0.8 + bonus + 0.01 * seed
            result = {
                "status": "done",
                "experiment": experiment,
                "run_dir": str(run_dir),
                "seed": seed,
                "dataset": "digits",
                "net": "DendriticMLP",
                "neuron": neuron,
                "widths": [16, 16],
                "num_params": count_parameters(net),
                "test_acc": test_acc,
                "test_loss": 0.5,
                "best_checkpoint": checkpoint.relative_to(run_dir).as_posix(),
                "config": {
                    "model": {"net": {"class_path": "lit_dendrite.nn.DendriticMLP", "init_args": init_args}},
                    "data": {"dataset": "digits", "root": "data"},
                },
            }
            (run_dir / "result.json").write_text(json.dumps(result))
            robustness = {
                "corruptions": {
                    "accuracy": {
                        name: {str(s): test_acc - 0.05 * s - shift for s in range(1, 6)}
                        for name, shift in (("gaussian_noise", 0.0), ("fog", 0.1))
                    },
                    "mCE": 0.9 - bonus + 0.01 * seed,
                    "relative_mCE": 0.95 - bonus,
                },
                "adversarial": {
                    "LinfPGD": {
                        "epsilons": [0.0, 0.1, 0.3],
                        "robust_accuracy": [test_acc, 0.5 + bonus, 0.1 + bonus + 0.01 * seed],
                        "reported": {"epsilon": 0.3, "robust_accuracy": 0.1 + bonus + 0.01 * seed},
                    }
                },
            }
            (run_dir / "robustness.json").write_text(json.dumps(robustness))
    return sweep_dir


def train_tiny_sweep(sweep_dir: Path, epochs: int = 2, seeds: tuple[int, ...] = (1, 2)) -> Path:
    """Train the digits 2-arg and ReLU experiments through the real pipeline (finished runs are skipped)."""
    from lit_dendrite.cli import train

    configs = Path(__file__).resolve().parents[1] / "configs" / "experiment"
    for experiment in CONDITIONS:
        for seed in seeds:
            run_dir = sweep_dir / experiment / f"seed={seed}"
            train(
                [
                    "--config",
                    str(configs / f"{experiment}.yaml"),
                    "--trainer.max_epochs",
                    str(epochs),
                    "--trainer.enable_progress_bar",
                    "false",
                    "--protocol.pretrain_epochs",
                    "1",
                    "--run_dir",
                    str(run_dir),
                    "--seed_everything",
                    str(seed),
                ]
            )
    return sweep_dir
